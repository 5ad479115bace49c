"""The one interface between data and training: what the Engine asks a stream for. In-memory data
(`data.loader.TrainStream`), tar shards (`data.webdataset.ShardStream`) and the bench's fixed batches implement it."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stream(Protocol):
    def get(self, step: int, micro: int) -> dict[str, Any]:
        """The micro-batch `micro` of optimizer step `step` for this rank: {'images', 'keys', ...} on the training
        device. The same (step, micro) always gives the same samples (resume, any process count)."""
        ...

    def epoch_of(self, step: int) -> int:
        """The epoch that step `step` belongs to (schedules and checkpoints record it)."""
        ...

    def close(self) -> None:
        """Stop any worker processes or threads; the stream is not used afterwards."""
        ...
