"""The worker's fallback policy: take what is queued, oldest first, up to a maximum; never wait."""

from __future__ import annotations

from split_infer.batching.interface import Decision, PolicyBase, QueueView


class TakeQueued(PolicyBase):
    name = "take-queued"

    def __init__(self, max_batch: int) -> None:
        super().__init__()
        self.max_batch = max_batch

    def _decide(self, queue: QueueView, now: float) -> Decision:
        return Decision(take=queue.fifo(self.max_batch))
