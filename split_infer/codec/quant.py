"""Per-channel affine quantisation (channels on axis 1), the building block of every codec."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def channel_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 1) min and max of a [N, C, ...] tensor, float32."""
    c = x.shape[1]
    flat = np.moveaxis(x, 1, 0).reshape(c, -1)
    return flat.min(axis=1).astype(np.float32), flat.max(axis=1).astype(np.float32)


def affine_params(lo: np.ndarray, hi: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and offset so that codes 0..2**bits-1 span [lo, hi] per channel."""
    levels = (1 << bits) - 1
    scale = ((hi - lo) / levels).astype(np.float32)
    return scale, lo.astype(np.float32)


def _bcast(v: np.ndarray, ndim: int) -> np.ndarray:
    out: np.ndarray = v.reshape((1, -1) + (1,) * (ndim - 2))
    return out


def quantise(x: np.ndarray, scale: np.ndarray, offset: np.ndarray, bits: int) -> np.ndarray:
    """Codes (uint8) of x; values outside the calibrated range are clipped to it."""
    inv = np.where(scale > 0, 1.0 / np.maximum(scale, 1e-30), 0.0).astype(np.float32)
    q: np.ndarray = (x - _bcast(offset, x.ndim)) * _bcast(inv, x.ndim)
    q += 0.5  # floor(v + 0.5) == round half up; cheaper than np.rint + a second pass
    np.clip(q, 0, (1 << bits) - 1, out=q)
    return q.astype(np.uint8)


def dequantise(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray,
               dtype: npt.DTypeLike = np.float32) -> npt.NDArray[Any]:
    out: np.ndarray = codes.astype(np.float32) * _bcast(scale, codes.ndim) + _bcast(offset, codes.ndim)
    return out.astype(dtype, copy=False)
