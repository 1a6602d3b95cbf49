"""The video codec's channel reductions: a linear basis or a learned bottleneck, one interface.

Both map the cut tensor [1, C, H, W] to k < C channels on the edge (`encode`) and back in the
cloud (`decode`), and are named on the wire by `model_id` (the SHA-256 of their arrays):
- `Basis` (basis.py, `split-infer codec calibrate`): linear, calibrated per camera in seconds;
- `LearnedModel` (learned.py, `split-infer codec train`): convolutions distilled through the head,
  with a decoder in the cloud. Its latent is trained on integer codes, so the video codec codes it
  with that fixed step (`code_step`) instead of normalising it at each key frame.
"""

from __future__ import annotations

from pathlib import Path

from split_infer.codec.basis import SHIPPED_DIR, SUFFIX, Basis
from split_infer.codec.errors import CodecError
from split_infer.codec.learned import LearnedModel

Reduction = Basis | LearnedModel


def load(path: str | Path) -> Reduction:
    """A reduction file: NAME.basis.npz is a basis, any other .npz a learned model."""
    return Basis.load(path) if str(path).endswith(SUFFIX) else LearnedModel.load(path)


def resolve(name: str) -> Path:
    """A reduction file's path, or the name of one that ships with the package (without suffix)."""
    path = Path(name)
    if path.suffix == ".npz" or path.is_file():
        return path
    for suffix in (SUFFIX, ".npz"):
        shipped = SHIPPED_DIR / f"{name}{suffix}"
        if shipped.is_file():
            return shipped
    known = sorted(p.name.removesuffix(SUFFIX).removesuffix(".npz") for p in SHIPPED_DIR.glob("*.npz"))
    raise FileNotFoundError(f"no reduction file {name!r} and no shipped one of that name (shipped: {known})")


def find(model_id: str, dirs: list[Path]) -> Reduction:
    """The reduction with this id in any of `dirs` (the decoder's model folder, then the shipped ones)."""
    for d in dirs:
        for path in sorted(Path(d).glob("*.npz")):
            try:
                r = load(path)
            except (CodecError, KeyError, ValueError, OSError):
                continue  # another kind of model file shares the folder
            if r.model_id == model_id:
                return r
    raise CodecError(f"channel reduction {model_id!r} not found in {', '.join(map(str, dirs)) or 'no folder'}")
