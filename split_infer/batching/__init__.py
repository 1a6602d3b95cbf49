"""Traffic-adaptive batching for the cloud head: policies, cost model, traces and a simulator.

Pure Python + numpy (torch only inside head_cost, imported lazily).
"""

from split_infer.batching.cost import CostModel
from split_infer.batching.interface import (
    BatchPolicy,
    Decision,
    PolicyError,
    PolicyMetrics,
    QueuedFrameView,
    QueueView,
)
from split_infer.batching.policy import make_policy
from split_infer.batching.take_queued import TakeQueued

__all__ = ["BatchPolicy", "CostModel", "Decision", "PolicyError", "PolicyMetrics", "QueueView", "QueuedFrameView",
           "TakeQueued", "make_policy"]
