"""Traffic-adaptive batching for the cloud head: policies, cost model, traces and a simulator.

Pure Python + numpy (torch only inside head_cost, imported lazily).
"""

from split_infer.batching.cost import CostModel
from split_infer.batching.policy import (
    BatchPolicy, Decision, Frame, PolicyError, PolicyMetrics, QueueView, make_policy,
)

__all__ = ["BatchPolicy", "CostModel", "Decision", "Frame", "PolicyError", "PolicyMetrics", "QueueView",
           "make_policy"]
