"""The `worker.release` section of the cloud config: which model a worker runs, under which
model_version, and (on a canary) the stable model it shadows. docs/canary.md.

Kept apart from split_infer.cloud.release (which loads the models) so that split_infer.config can
hold it without importing numpy or torch.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# A model_version is a Prometheus label value and a record field: short, printable, no spaces.
MODEL_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShadowSettings(_Strict):
    """A canary worker's shadow: the stable model, run on a sampled share of the same received
    features, and the agreement of the canary's detections with its detections."""

    # The stable head: a model name or weights path (as `model.name`); None: this worker's own head
    # (a codec-model canary, where only the codec model differs).
    model: str | None = None
    # The stable codec model (a .basis.npz, a shipped basis name, or a learned .npz); None: none,
    # the received features go to the head as they are.
    codec_model: str | None = None
    version: str | None = Field(default=None, pattern=MODEL_VERSION_PATTERN)  # None: derived, as model_version
    sample_ratio: float = Field(default=0.05, gt=0, le=1)  # share of frames the stable model also runs on
    window_frames: int = Field(default=200, ge=1)  # the agreement pools the last this many shadowed frames
    match_iou: float = Field(default=0.5, gt=0, le=1)  # a canary box matches a stable box of its class at this IoU


class ModelRelease(_Strict):
    """What this worker runs beyond `model`, and the name every record and latency sample carries."""

    # None: derived from the head weights, cut, image size, thresholds and codec model (a short
    # hash), so it changes whenever the model does. Set it explicitly for a canary rollout, so the
    # AnalysisTemplate can be told the name in advance (deploy/k8s/components/canary).
    model_version: str | None = Field(default=None, pattern=MODEL_VERSION_PATTERN)
    # A codec model whose reduction and reconstruction the worker applies to the received features
    # before the head: how a new codec model is canaried in the cloud before the edges switch to it.
    codec_model: str | None = None
    shadow: ShadowSettings | None = None  # set on canary workers only
