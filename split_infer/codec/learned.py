"""The learned bottleneck's runtime, in numpy (no torch on the edge).

A model file (.npz, written by `split-infer codec train`) holds a small encoder that runs after
the cut on the edge (1x1 conv 128->H, SiLU, 3x3 conv H->C) and a decoder that runs before the
head in the cloud (3x3 conv C->H2, SiLU, 3x3 conv H2->128, SiLU), plus JSON metadata (the
footage it was trained on, the cut, the tensor it replaces). The latent is rounded to integers
(divided by `step` first: a coarser step spends fewer bits) and travels as 8-bit codes through
the same temporal delta + dead zone + zstd path as the training-free codec: traffic cameras are
static, so most latent values repeat from frame to frame.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from split_infer.codec import bottleneck
from split_infer.codec.codecs import Decoder, TemporalEncoder, Tensors, register_frame_decoder
from split_infer.codec.errors import CodecError
from split_infer.codec.wire import CodecParams, TensorRecord, WireFrame

LATENT = "z"  # the latent's tensor name on the wire
ZERO_CODE = 128  # the code of latent value 0


@dataclass
class LearnedModel:
    weights: dict[str, np.ndarray]
    meta: dict[str, Any]
    model_id: str

    @classmethod
    def load(cls, path: str | Path) -> LearnedModel:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"learned codec model not found: {path}")
        with np.load(path, allow_pickle=False) as npz:
            weights = {k: npz[k].astype(np.float32) for k in npz.files if k != "meta"}
            meta = json.loads(bytes(npz["meta"]).decode())
        digest = hashlib.sha256()
        for k in sorted(weights):
            digest.update(k.encode())
            digest.update(weights[k].tobytes())
        model = cls(weights, meta, digest.hexdigest()[:16])
        for ops in model.arch.values():
            bottleneck.check(ops, weights)
        return model

    @property
    def tensor(self) -> str:
        return str(self.meta.get("tensor", "x4"))

    @property
    def arch(self) -> dict[str, bottleneck.Ops]:
        """The encoder's and decoder's ops (bottleneck.py); files of format v1 predate the lists."""
        arch = self.meta.get("architecture") or {"encoder": bottleneck.V1_ENCODER, "decoder": bottleneck.V1_DECODER}
        return {"encoder": list(arch["encoder"]), "decoder": list(arch["decoder"])}

    @property
    def components(self) -> int:
        """Latent channels: the output channels of the encoder's last convolution."""
        last = [bottleneck.parse(op)[1] for op in self.arch["encoder"] if op.startswith("conv ")][-1]
        return int(self.weights[f"{last}.weight"].shape[0])

    @property
    def channels(self) -> int:
        """Channels of the tensor it replaces: the input channels of the encoder's first convolution."""
        first = [bottleneck.parse(op)[1] for op in self.arch["encoder"] if op.startswith("conv ")][0]
        return int(self.weights[f"{first}.weight"].shape[1])

    @property
    def code_step(self) -> float:
        """The latent's quantisation step it was trained for (integer codes)."""
        return float(self.meta.get("code_step", 1.0))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """[1, 128, H, W] features -> [1, C, H, W] latent (float, before rounding)."""
        return bottleneck.run(self.arch["encoder"], self.weights, x[0].astype(np.float32))[None]

    def decode(self, y: np.ndarray) -> np.ndarray:
        """Latent -> features. Runs in the cloud: torch when installed (faster), numpy otherwise."""
        if importlib.util.find_spec("torch") is not None:
            import torch  # optional heavy dependency: the cloud has it, the edge does not

            with torch.no_grad():
                w = {k: torch.from_numpy(v) for k, v in self.weights.items()}
                x: np.ndarray = bottleneck.run_torch(self.arch["decoder"], w,
                                                     torch.from_numpy(y.astype(np.float32))).numpy()
            return x
        return bottleneck.run(self.arch["decoder"], self.weights, y[0].astype(np.float32))[None]


class LearnedEncoder(TemporalEncoder):
    """Learned bottleneck + temporal delta coding of its integer latent.

    step: quantisation step of the latent (1.0 = as trained; larger = fewer bytes);
    deadzone: latent changes under this many steps are not sent (1 = exact)."""

    codec = "learned"

    def __init__(self, path: str, step: float = 1.0, deadzone: int = 1, key_interval: int = 30, **kw: Any) -> None:
        super().__init__(bits=8, deadzone=deadzone, key_interval=key_interval, **kw)
        self.model = LearnedModel.load(path)
        if self.cut is None:
            self.cut = self.model.meta.get("cut")
        if not step > 0:
            raise ValueError("step must be positive")
        self.step = float(step)

    @property
    def params(self) -> CodecParams:
        return {"model": self.model.model_id, "step": self.step, "deadzone": self.deadzone,
                "key_interval": self.key_interval, "tensor": self.model.tensor}

    def _wants_key(self, tensors: Tensors) -> bool:
        ref = self._refs.get(LATENT)
        x = next(iter(tensors.values()))
        return self._since_key >= self.key_interval or ref is None or ref.codes.shape[2:] != x.shape[2:]

    def _encode(self, tensors: Tensors, key: bool) -> list[TensorRecord]:
        if set(tensors) == {LATENT}:  # the edge IR already ran this encoder (split-infer export --codec-model)
            return super()._encode(tensors, key)
        name = self.model.tensor
        if set(tensors) != {name}:
            raise CodecError(f"this learned codec takes exactly the tensor {name!r} (or its latent {LATENT!r}), "
                             f"got {sorted(tensors)}")
        return super()._encode({LATENT: self.model.encode(tensors[name])}, key)

    def _key_scales(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # codes = round(y / step) + 128: an affine code with a fixed scale, clipped to +-127 steps
        c = x.shape[1]
        return np.full(c, self.step, np.float32), np.full(c, -ZERO_CODE * self.step, np.float32)


def model_for(decoder: Decoder, model_id: str) -> LearnedModel:
    """The learned model with this id, from the decoder's `learned_dir` (loaded once per decoder)."""
    models: dict[str, LearnedModel] = decoder.cache.setdefault("learned_models", {})
    if model_id not in models:
        if decoder.learned_dir is None:
            raise CodecError(f"learned codec frame (model {model_id!r}) but this decoder has no learned_dir")
        for path in sorted(Path(decoder.learned_dir).glob("*.npz")):
            if path.name.endswith(".basis.npz"):  # the video codec's channel reductions share the folder
                continue
            m = LearnedModel.load(path)
            models.setdefault(m.model_id, m)
        if model_id not in models:
            raise CodecError(f"learned codec model {model_id!r} not found in {decoder.learned_dir}")
    return models[model_id]


@register_frame_decoder("learned")
class LearnedFrameDecoder:
    """Cloud side of one stream: the latent's codes as the temporal codec sends them, then the
    model's decoder back to the features the head expects."""

    def __call__(self, frame: WireFrame, decoder: Decoder) -> Tensors:
        return reconstruct(decoder.decode_codes(frame), frame.params, decoder)


def reconstruct(latents: Tensors, params: CodecParams, decoder: Decoder) -> Tensors:
    """Cloud side: dequantised latent -> the features the head expects."""
    if set(latents) != {LATENT}:
        raise CodecError(f"a learned frame carries exactly the tensor {LATENT!r}")
    model = model_for(decoder, str(params.get("model", "")))
    tensor = str(params.get("tensor", model.tensor))
    y = latents[LATENT]
    cin = model.weights["dec1.weight"].shape[1]
    if y.ndim != 4 or y.shape[0] != 1 or y.shape[1] != cin:
        raise CodecError(f"latent shape {y.shape} does not fit model {model.model_id} ({cin} channels)")
    return {tensor: model.decode(y)}

