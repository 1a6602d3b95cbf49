"""Features through an inner video codec, as MPEG's FCTM does: the `video` codec.

Each channel of the feature tensor is normalised (per-channel z-score, scales fixed at each key
frame), quantised to 8 bits and tiled into one grey mosaic picture; a stock video encoder
(x264 or x265 through PyAV) then does what it is good at: motion-compensated prediction from the
previous pictures and CABAC. Traffic cameras are static, so most of a feature mosaic is predicted
from the last one for a few bits.

The stream is stateful like `temporal`: the encoder and the decoder each hold an inner codec
context that is rebuilt at every key frame (an IDR picture), so a key frame is self-contained and
a delta frame decodes only right after its predecessor. Zero-latency settings make every input
picture come out as exactly one packet, so one payload is one frame (no reordering, no lookahead).

Edge-safe: numpy and PyAV (FFmpeg's libraries, no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from split_infer.codec import quant
from split_infer.codec import reduction as reductions
from split_infer.codec.basis import SHIPPED_DIR
from split_infer.codec.codecs import Decoder, Encoder, Tensors, register_frame_decoder
from split_infer.codec.errors import CodecError
from split_infer.codec.learned import LATENT
from split_infer.codec.reduction import Reduction
from split_infer.codec.wire import Q_VIDEO, CodecParams, TensorRecord, WireFrame

if TYPE_CHECKING:
    from av.video.codeccontext import VideoCodecContext
    from av.video.frame import VideoFrame

# Inner codecs: our name -> (FFmpeg encoder, FFmpeg decoder). The name travels in the params.
INNER = {"h264": ("libx264", "h264"), "hevc": ("libx265", "hevc")}
MID = 128  # the code of a channel's mean, and of padding tiles and chroma
SPAN = 127  # codes MID - SPAN .. MID + SPAN cover mean -/+ clip * std
MAX_PICTURE = 8192  # mosaic width or height: what x264/x265 accept comfortably
# Default CRFs, at about agreement 0.97 on the street clip's held-out half (docs/bandwidth.md). A
# learned latent spans a few tens of integer codes, not the 8-bit z-scores of the other paths, so
# the same picture quality needs a lower CRF.
DEFAULT_CRF = 28
DEFAULT_CRF_LEARNED = 22


def _av() -> ModuleType:
    try:
        import av  # loads FFmpeg's libraries (0.15 s): only once a video stream starts
    except ImportError as e:  # pragma: no cover - av is a core dependency
        raise CodecError("the video codec needs PyAV (pip install av)") from e
    av.logging.set_level(av.logging.PANIC)  # a hostile packet must not spam the log; errors still raise
    return av


def _aligned(n: int, block: int = 64) -> int:
    """`n` rounded up to a whole coding block (a CTU of x265, four macroblocks of x264)."""
    return -(-n // block) * block


@dataclass(frozen=True)
class Mosaic:
    """How the C channels of an [1, C, H, W] tensor tile one picture: `cols` tiles a row."""

    channels: int
    height: int
    width: int
    cols: int

    @classmethod
    def for_shape(cls, shape: tuple[int, ...], cols: int | None = None) -> Mosaic:
        if len(shape) != 4 or shape[0] != 1:
            raise CodecError(f"the video codec takes [1, C, H, W] tensors, got shape {shape}")
        _, c, h, w = shape
        if h % 2 or w % 2:
            raise CodecError(f"the video codec needs even feature maps (4:2:0 pictures), got {h}x{w}")
        if cols is None:  # the most nearly 16:9 picture with the fewest padding tiles
            cols = min(range(1, c + 1), key=lambda k: (math.ceil(c / k) * k - c,
                                                       abs(math.log(k * w / (math.ceil(c / k) * h) / (16 / 9)))))
        m = cls(c, h, w, cols)
        if not 1 <= cols <= c or m.picture_width > MAX_PICTURE or m.picture_height > MAX_PICTURE:
            raise CodecError(f"mosaic of {c} tiles of {h}x{w} in {cols} columns does not fit a picture")
        return m

    @property
    def rows(self) -> int:
        return -(-self.channels // self.cols)

    @property
    def picture_width(self) -> int:
        return self.cols * self.width

    @property
    def picture_height(self) -> int:
        return self.rows * self.height

    def pack(self, codes: np.ndarray) -> np.ndarray:
        """[C, H, W] uint8 -> [rows*H, cols*W] picture (padding tiles at MID)."""
        c, h, w = codes.shape
        pad = self.rows * self.cols - c
        if pad:
            codes = np.concatenate([codes, np.full((pad, h, w), MID, np.uint8)])
        tiles = codes.reshape(self.rows, self.cols, h, w).transpose(0, 2, 1, 3)
        picture: np.ndarray = tiles.reshape(self.rows * h, self.cols * w)
        return picture

    def unpack(self, picture: np.ndarray) -> np.ndarray:
        h, w = self.height, self.width
        tiles: np.ndarray = picture.reshape(self.rows, h, self.cols, w).transpose(0, 2, 1, 3).reshape(-1, h, w)
        return tiles[:self.channels]


def _encoder_context(inner: str, mosaic: Mosaic, crf: float, preset: str, key_interval: int,
                     threads: int) -> VideoCodecContext:
    av = _av()
    name = INNER[inner][0]
    ctx: VideoCodecContext = av.CodecContext.create(name, "w")
    ctx.width, ctx.height, ctx.pix_fmt = mosaic.picture_width, mosaic.picture_height, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, 10), Fraction(10, 1)  # nominal: CRF ignores the clock
    ctx.gop_size = key_interval
    opts = {"crf": f"{crf:g}", "preset": preset, "tune": "zerolatency"}
    if inner == "hevc":
        opts["x265-params"] = (f"keyint={key_interval}:min-keyint={key_interval}:frame-threads={threads}:"
                               f"pools={threads}:log-level=none" + (":lossless=1" if crf == 0 else ""))  # as x264
    else:
        opts["threads"] = str(threads)
    ctx.options = opts
    return ctx


def _picture(av: ModuleType, luma: np.ndarray) -> VideoFrame:
    h, w = luma.shape
    frame: VideoFrame = av.VideoFrame(w, h, "yuv420p")
    # Planes are written as is: no range conversion (a grey path that maps 0-255 to 16-235 costs
    # fidelity for nothing). Rows may be padded to an aligned line size.
    y = frame.planes[0]
    rows = np.full((h, y.line_size), MID, np.uint8)
    rows[:, :w] = luma
    y.update(rows)  # type: ignore[arg-type]  # PyAV takes any buffer; its stub says bytes
    for chroma in frame.planes[1:]:
        chroma.update(np.full(chroma.line_size * chroma.height, MID, np.uint8))  # type: ignore[arg-type]
    return frame


def _luma(frame: VideoFrame) -> np.ndarray:
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
    luma: np.ndarray = rows[:, :plane.width]
    return luma


@dataclass
class _Stream:
    """What one side keeps between frames for one tensor."""

    mosaic: Mosaic
    scale: np.ndarray
    offset: np.ndarray
    ctx: VideoCodecContext  # the inner codec's


def key_scales(x: np.ndarray, clip: float, balance: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel normalisation as an affine code map: code MID is the channel's mean and
    MID +/- SPAN is mean +/- clip * s, with s = std**balance * max_std**(1 - balance).

    balance 1 is FCTM's z-score (every channel spans the codes); 0 gives every channel the same
    step (quiet channels get few codes); in between trades one for the other."""
    c = x.shape[1]
    flat = np.moveaxis(x, 1, 0).reshape(c, -1)
    mean, std = flat.mean(axis=1), np.maximum(flat.std(axis=1), 1e-6)
    s = std ** balance * std.max() ** (1.0 - balance)
    scale = (s * clip / SPAN).astype(np.float32)
    return scale, (mean - MID * scale).astype(np.float32)


class VideoEncoder(Encoder):
    """Per-channel normalised 8-bit codes, tiled into a mosaic, through x264 or x265.

    inner: "h264" or "hevc"; crf: the inner codec's constant rate factor (higher = fewer bytes;
    default DEFAULT_CRF, or DEFAULT_CRF_LEARNED with a learned reduction);
    preset: its speed preset; clip: codes span mean +/- clip * s per channel (see `key_scales`);
    balance: 1 = z-score per channel, 0 = one step for all (default 0 with a reduction, else 0.5);
    key_interval: frames per key frame; threads: the inner encoder's threads (1: the edge budget is
    per core); reduction: a channel reduction file applied first (reduction.py: a basis from
    `split-infer codec calibrate`, or a learned bottleneck from `split-infer codec train`, whose
    latent is coded with the fixed step it was trained on)."""

    codec = "video"

    def __init__(self, inner: str = "h264", crf: float | None = None, preset: str = "veryfast", clip: float = 8.0,
                 balance: float | None = None, key_interval: int = 30, threads: int = 1,
                 reduction: str | Path | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.reduction: Reduction | None = reductions.load(reduction) if reduction is not None else None
        if balance is None:  # a reduction's components are in one metric already: one step for all
            balance = 0.0 if self.reduction is not None else 0.5
        if crf is None:
            learned = self.reduction is not None and self.reduction.code_step is not None
            crf = DEFAULT_CRF_LEARNED if learned else DEFAULT_CRF
        if inner not in INNER:
            raise ValueError(f"inner codec must be one of {sorted(INNER)}, got {inner!r}")
        if not 0 <= crf <= 51 or clip <= 0 or not 0 <= balance <= 1 or key_interval < 1 or threads < 1:
            raise ValueError("crf 0..51, clip > 0, balance 0..1, key_interval >= 1, threads >= 1")
        self.inner, self.crf, self.preset, self.clip, self.balance = inner, float(crf), preset, clip, balance
        self.key_interval, self.threads = key_interval, threads
        self._streams: dict[str, _Stream] = {}
        self._since_key = 0

    @property
    def params(self) -> CodecParams:
        cols = {name: st.mosaic.cols for name, st in self._streams.items()}
        out: CodecParams = {"inner": self.inner, "crf": self.crf, "cols": max(cols.values(), default=0)}
        if self.reduction is not None:
            out["reduction"] = self.reduction.model_id
        return out

    def _reduce(self, tensors: Tensors) -> Tensors:
        r = self.reduction
        if r is None:
            return tensors
        if set(tensors) == {LATENT}:  # a learned encoder ran inside the edge's IR: its latent
            return {r.tensor: tensors[LATENT]}
        if set(tensors) != {r.tensor}:
            raise CodecError(f"reduction {r.model_id} reduces exactly the tensor {r.tensor!r}, got {sorted(tensors)}")
        x = tensors[r.tensor]
        if x.ndim == 4 and x.shape[1] == r.components != r.channels:
            return tensors  # reduced already, inside the edge's IR (split-infer export --codec-model)
        return {r.tensor: r.encode(x)}

    def _coded_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """The shape that goes on the wire: after the reduction (shape only: nothing computed)."""
        if self.reduction is None or (x.ndim == 4 and x.shape[1] == self.reduction.components):
            return x.shape
        return (x.shape[0], self.reduction.components, *x.shape[2:])

    def _wants_key(self, tensors: Tensors) -> bool:
        if self.reduction is not None and set(tensors) == {LATENT}:
            tensors = {self.reduction.tensor: tensors[LATENT]}
        if self._since_key >= self.key_interval or set(tensors) != set(self._streams):
            return True
        return any(Mosaic.for_shape(self._coded_shape(x), self._streams[n].mosaic.cols) != self._streams[n].mosaic
                   for n, x in tensors.items())

    def _after(self, nbytes: int, key: bool) -> None:
        self._since_key = 1 if key else self._since_key + 1

    def _encode(self, tensors: Tensors, key: bool) -> list[TensorRecord]:
        tensors = self._reduce(tensors)
        if key:
            if len(tensors) > 1 and len({Mosaic.for_shape(x.shape).cols for x in tensors.values()}) > 1:
                raise CodecError("the video codec sends tensors of one layout per frame (one `cols`)")
            self._streams = {}
        return [self._encode_tensor(name, x, key) for name, x in tensors.items()]

    def _key_scales(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        step = self.reduction.code_step if self.reduction is not None else None
        if step is None:
            return key_scales(x, self.clip, self.balance)
        # A learned latent: integer codes as trained, centred on each channel's mean.
        mean = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).mean(axis=1)
        scale = np.full(x.shape[1], step, np.float32)
        return scale, (mean - MID * scale).astype(np.float32)

    def _encode_tensor(self, name: str, x: np.ndarray, key: bool) -> TensorRecord:
        av = _av()
        if key:
            mosaic = Mosaic.for_shape(x.shape)
            scale, offset = self._key_scales(x)
            ctx = _encoder_context(self.inner, mosaic, self.crf, self.preset, self.key_interval, self.threads)
            self._streams[name] = _Stream(mosaic, scale, offset, ctx)
        st = self._streams[name]
        codes = quant.quantise(x, st.scale, st.offset, 8)[0]
        picture = _picture(av, st.mosaic.pack(codes))
        packets = st.ctx.encode(picture)  # a fresh context: its first picture is an IDR picture
        if len(packets) != 1:  # zero-latency settings emit one packet per picture
            raise CodecError(f"inner {self.inner} encoder returned {len(packets)} packets for one picture")
        return TensorRecord(name, np.dtype("<f4"), x.shape, Q_VIDEO, 8, st.scale if key else None,
                            st.offset if key else None, bytes(packets[0]))


@register_frame_decoder("video")
class VideoFrameDecoder:
    """The cloud side of one stream: one inner decoder per tensor, rebuilt at each key frame."""

    def __init__(self) -> None:
        self.streams: dict[str, _Stream] = {}
        self.inner: str | None = None

    def __call__(self, frame: WireFrame, decoder: Decoder) -> Tensors:
        av = _av()
        inner = frame.params.get("inner")
        if inner not in INNER:
            raise CodecError(f"video frame names an unknown inner codec {inner!r}")
        if frame.key:
            self.streams, self.inner = {}, inner
        elif inner != self.inner:
            raise CodecError(f"video delta frame of inner codec {inner!r} after a {self.inner!r} key frame")
        elif {t.name for t in frame.tensors} != set(self.streams):
            raise CodecError("video delta frame carries a different set of tensors than its reference")
        out = {}
        for t in frame.tensors:
            if t.mode != Q_VIDEO:
                raise CodecError(f"tensor {t.name}: the video codec sends video packets only")
            if frame.key:
                self.streams[t.name] = self._start_stream(av, t, inner, frame.params.get("cols"))
            out[t.name] = self._decode_tensor(av, self.streams[t.name], t, inner)
        model_id = frame.params.get("reduction", frame.params.get("basis"))  # "basis": before learned ones
        if model_id is not None:
            r = self._reduction(str(model_id), decoder)
            out = {name: r.decode(y) for name, y in out.items()}
        return out

    @staticmethod
    def _start_stream(av: ModuleType, t: TensorRecord, inner: str, cols: object) -> _Stream:
        """A key frame's tensor: a fresh inner decoder, and the mosaic and scales it fixes."""
        ctx = av.CodecContext.create(INNER[inner][1], "r")
        ctx.thread_count = 1  # frame threading would hold pictures back
        if not isinstance(cols, int) or isinstance(cols, bool):
            raise CodecError(f"video key frame needs an integer 'cols', got {cols!r}")
        mosaic = Mosaic.for_shape(t.shape, cols)
        # A tiny packet may declare a huge picture: FFmpeg refuses any larger than the mosaic (to
        # its coding block) before allocating it.
        ctx.options = {"max_pixels": str(_aligned(mosaic.picture_width) * _aligned(mosaic.picture_height))}
        return _Stream(mosaic, *t.affine(), ctx)

    @staticmethod
    def _decode_tensor(av: ModuleType, st: _Stream, t: TensorRecord, inner: str) -> np.ndarray:
        if (st.mosaic.channels, st.mosaic.height, st.mosaic.width) != tuple(t.shape[1:]) or t.shape[0] != 1:
            raise CodecError(f"tensor {t.name}: shape {t.shape} does not match its key frame")
        try:
            pictures = st.ctx.decode(av.Packet(t.body))
        except (av.error.FFmpegError, ValueError) as e:
            raise CodecError(f"tensor {t.name}: inner {inner} packet does not decode: {e}") from None
        if len(pictures) != 1:
            raise CodecError(f"tensor {t.name}: inner {inner} packet gave {len(pictures)} pictures, not 1")
        luma = _luma(pictures[0])
        if luma.shape != (st.mosaic.picture_height, st.mosaic.picture_width):
            raise CodecError(f"tensor {t.name}: picture {luma.shape} does not match the mosaic")
        codes = st.mosaic.unpack(luma)[None]
        return quant.dequantise(codes, st.scale, st.offset, t.dtype)

    @staticmethod
    def _reduction(model_id: str, decoder: Decoder) -> Reduction:
        found: dict[str, Reduction] = decoder.cache.setdefault("reductions", {})
        if model_id not in found:
            dirs = ([Path(decoder.learned_dir)] if decoder.learned_dir else []) + [SHIPPED_DIR]
            found[model_id] = reductions.find(model_id, dirs)
        return found[model_id]
