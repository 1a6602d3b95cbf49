"""What a worker runs: its head, the codec model applied to the received features before it, and
the model_version stamped on every record and latency sample; on a canary, its shadow.

    release = load_release(cfg, head)          # cfg.worker.release (release_config.py)
    worker = Worker(cfg, r, release.head, ..., model_version=release.version, shadow=release.shadow)

The version, unless configured, is derived from everything that shapes the detections: the head's
weights (the SHA-256 of the weights file), cut, image size, confidence and IoU thresholds, and the
codec model's id. docs/canary.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from split_infer.cloud.head import HeadFn, load_head
from split_infer.cloud.release_config import MODEL_VERSION_PATTERN, ShadowSettings
from split_infer.cloud.shadow import Shadow
from split_infer.codec import basis as bases
from split_infer.config import CloudConfig, ConfigError, ModelConfig
from split_infer.model import weights

log = logging.getLogger(__name__)

DEFAULT_HEAD = "split_infer.cloud.head:yolo_head"
_CONVERTED = re.compile(r"yolov5[nsmlx]")  # names the weights cache holds (split_infer.model.loading)
Array = np.ndarray


@dataclass(frozen=True)
class CodecModel:
    """A codec model's reduction and reconstruction of one tensor, without the quantisation the
    codec adds on the wire: what the features become had the edge coded them with this model."""

    model_id: str
    tensor: str
    encode: Callable[[Array], Array]  # [1, C, H, W] -> code space
    decode: Callable[[Array], Array]  # code space -> [1, C, H, W]
    kind: str  # basis | learned

    @classmethod
    def load(cls, spec: str) -> CodecModel:
        """A video-codec basis (.basis.npz path or shipped name) or a learned bottleneck (.npz)."""
        try:
            if spec.endswith(".npz") and not spec.endswith(bases.SUFFIX):
                from split_infer.codec.learned import LearnedModel  # numpy; torch only if installed

                learned = LearnedModel.load(spec)
                return cls(learned.model_id, learned.tensor, learned.encode, learned.decode, "learned")
            b = bases.Basis.load(bases.resolve(spec))
        except (OSError, KeyError, ValueError) as e:  # a missing or malformed file (CodecError is a ValueError)
            raise ConfigError(f"codec model {spec!r}: {e}") from None
        return cls(b.model_id, b.tensor, b.encode, b.decode, "basis")

    def __call__(self, feats: dict[str, Array]) -> dict[str, Array]:
        if self.tensor not in feats:
            raise ValueError(f"codec model {self.model_id} reconstructs {self.tensor!r}; the frames carry "
                             f"{sorted(feats)}")
        x = feats[self.tensor]
        out = np.concatenate([self.decode(self.encode(x[i:i + 1])) for i in range(len(x))])
        return {**feats, self.tensor: out.astype(np.float32, copy=False)}


def with_codec(head: HeadFn, codec: CodecModel | None) -> HeadFn:
    """`head` behind `codec`'s round trip (the head itself without one)."""
    if codec is None:
        return head

    def run(feats: dict[str, Array], sizes: list[tuple[int, int]]) -> list[list[dict]]:
        return head(codec(feats), sizes)

    return run


def weights_digest(name: str) -> str:
    """SHA-256 of the head's weights file: the converted cache file of a yolov5 name, else the
    path itself; a spec that names no file (an ultralytics .yaml: random weights) by its text."""
    path = weights.converted_path(name) if _CONVERTED.fullmatch(name) else Path(name)
    if not path.is_file():
        log.warning("no weights file for model %r: its model_version is derived from the name only", name)
        return hashlib.sha256(name.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def derive_version(model: ModelConfig, codec: CodecModel | None) -> str:
    """`<model stem>-<10 hex digits>`, the digits hashing whatever shapes the detections."""
    shape = {"weights": weights_digest(model.name), "cut": model.cut, "imgsz": list(model.imgsz),
             "conf": model.conf, "iou": model.iou, "codec_model": codec.model_id if codec else None}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "-", Path(model.name).name.removesuffix(".npz"))[:40].strip("-.") or "model"
    return f"{stem}-{digest}"


def model_version_arg(text: str) -> str:
    """argparse type of `--model-version`: the config's pattern, with a clear message."""
    if not re.fullmatch(MODEL_VERSION_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a model version (1-64 of A-Z a-z 0-9 _ . + -)")
    return text


@dataclass
class WorkerRelease:
    version: str
    head: HeadFn  # the codec model's round trip (if any), then the head
    shadow: Shadow | None = None


def load_release(cfg: CloudConfig, head: HeadFn, head_spec: str = DEFAULT_HEAD,
                 version: str | None = None, seed: int | None = None) -> WorkerRelease:
    """The worker's release from `cfg.worker.release`; `version` (the command line) overrides it."""
    rel = cfg.worker.release
    codec = CodecModel.load(rel.codec_model) if rel.codec_model else None
    version = version or rel.model_version or derive_version(cfg.model, codec)
    shadow = _shadow(cfg, head, head_spec, rel.shadow, version, seed) if rel.shadow else None
    log.info("model_version %s%s%s", version, f" (codec model {codec.model_id})" if codec else "",
             f"; shadowing {shadow.stable_version} on {shadow.sample_ratio:.0%} of frames" if shadow else "")
    return WorkerRelease(version, with_codec(head, codec), shadow)


def _shadow(cfg: CloudConfig, head: HeadFn, head_spec: str, s: ShadowSettings, version: str,
            seed: int | None) -> Shadow:
    stable_model = cfg.model if s.model is None else cfg.model.model_copy(update={"name": s.model})
    # Same head weights (a codec-model canary): the canary's head serves the shadow too.
    stable_head = head if stable_model == cfg.model else load_head(head_spec, cfg.model_copy(
        update={"model": stable_model}))
    stable_codec = CodecModel.load(s.codec_model) if s.codec_model else None
    stable_version = s.version or derive_version(stable_model, stable_codec)
    if stable_version == version:
        log.info("the shadow's stable model is this worker's own (%s): agreement will read 1", version)
    return Shadow(with_codec(stable_head, stable_codec), version, stable_version, s.sample_ratio, s.window_frames,
                  s.match_iou, seed=seed)
