"""The one error the codec raises for anything it cannot or must not decode."""

from __future__ import annotations


class CodecError(ValueError):
    """A payload is malformed, truncated, oversized, hostile, or does not follow the stream
    (a lost or reordered frame for a stateful codec). The message says which."""


class LimitExceeded(CodecError):
    """A header declares more tensors, ranks, dimensions or elements than the decoder's `Limits`."""
