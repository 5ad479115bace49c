"""Training batches addressed by (optimizer step, micro-step): resuming at step k needs no replay.

Order comes from torch's DistributedSampler (seeded per epoch with set_epoch), so N processes with per-rank batch
b see, at every step, exactly the samples one process with batch N*b sees. Augmentation is keyed by sample and
epoch (see keyed_random), so those samples are also augmented identically.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DistributedSampler

from mimkit.data.imageset import ImageSet
from mimkit.data.keyed_random import sample_keys, second_view_keys
from mimkit.data.transforms import BatchAugment
from mimkit.errors import ConfigError


class TrainStream:
    def __init__(
        self,
        data: ImageSet,
        augment: BatchAugment,
        micro_batch: int,
        accum_steps: int,
        rank: int,
        world_size: int,
        seed: int,
        device: torch.device,
        pre_augment=None,
        views: int = 1,
    ):
        self.data = data
        self.augment = augment
        self.views = views
        self.pre_augment = pre_augment  # per-image CPU augmentation on uint8 (RandAugment), before the batch crop
        self.micro_batch = micro_batch
        self.accum_steps = accum_steps
        self.device = device
        self.sampler = DistributedSampler(
            range(len(data)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.batches_per_epoch = len(self.sampler) // micro_batch
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"the training set has {len(data)} images, fewer than one batch per process "
                f"({micro_batch} x {world_size} processes): lower train.batch_size or raise "
                "data.fraction"
            )
        self._epoch = -1
        self._order: torch.Tensor | None = None
        self._pending: dict[int, Any] = {}  # index -> (host batch, RandAugment handle) started in the workers

    @property
    def images_per_epoch(self) -> int:
        return self.batches_per_epoch * self.micro_batch * self.sampler.num_replicas

    def epoch_of(self, step: int) -> int:
        return (step * self.accum_steps) // self.batches_per_epoch

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._order = torch.tensor(list(iter(self.sampler)), dtype=torch.int64)
            self._epoch = epoch
        return self._order

    def _host_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """uint8 images, ids, epoch and positions of micro-batch `index` (global count) of this process."""
        epoch, offset = divmod(index, self.batches_per_epoch)
        positions = self._epoch_order(epoch)[offset * self.micro_batch : (offset + 1) * self.micro_batch]
        images, ids = self.data.batch(positions)
        return images, ids, epoch, positions

    def get(self, step: int, micro: int) -> dict[str, Any]:
        """The augmented micro-batch `micro` of optimizer step `step` for this process. With RandAugment in worker
        processes the next micro-batch is started in them before this one is waited for, so they run while the
        device trains."""
        index = step * self.accum_steps + micro
        started = self._pending.pop(index, None)
        self._pending.clear()  # a jump (resume) leaves nothing stale behind
        images, ids, epoch, positions = started[0] if started else self._host_batch(index)
        pre = self.pre_augment
        if pre is not None:
            handle = started[1] if started else pre.submit(images, sample_keys(ids, epoch))
            if getattr(pre, "pool", None) is not None:
                ahead = self._host_batch(index + 1)
                self._pending[index + 1] = (ahead, pre.submit(ahead[0], sample_keys(ahead[1], ahead[2])))
            images = pre.collect(handle)
        batch = augmented_batch(images, ids, epoch, self.augment, self.device, None, self.views)
        if self.data.labels is not None:
            batch["labels"] = to_device(self.data.labels[positions], self.device)
        if self.data.targets is not None:
            batch["targets"] = to_device(self.data.targets[positions], self.device)
        return batch

    def close(self) -> None:
        """Stop RandAugment's worker processes (also done at exit)."""
        self._pending.clear()
        close = getattr(self.pre_augment, "close", None)
        if close is not None:
            close()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; on CUDA through pinned memory and a non-blocking copy, so the training loop never
    waits for a transfer (a copy from pageable memory would synchronise)."""
    if device.type != "cuda" or tensor.device.type == "cuda":  # (already on a GPU: decoded there)
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def augmented_batch(
    images: torch.Tensor,
    ids: torch.Tensor,
    epoch: int,
    augment: BatchAugment,
    device: torch.device,
    pre_augment=None,
    views: int = 1,
) -> dict[str, Any]:
    """uint8 CPU images + sample ids -> the batch the methods train on: keyed by (id, epoch), copied to `device`
    (pinned, asynchronously, on CUDA) and augmented there. Shared by every training stream."""
    epoch_keys = sample_keys(ids, epoch)
    if pre_augment is not None:
        images = pre_augment(images, epoch_keys)
    images = to_device(images, device)
    keys = to_device(epoch_keys, device)
    batch = {"images": augment(images, keys), "keys": keys, "ids": ids, "epoch": epoch}
    if views == 2:  # a second, independently augmented view (contrastive methods)
        batch["images2"] = augment(images, second_view_keys(keys))
    return batch
