"""ShardSet: the training images of a list of shards, by index, with the sample ids the other loaders use."""

from __future__ import annotations

import numpy as np
import torch

from mimkit.data.imageset import ImageSet
from mimkit.data.webdataset.decode import Member, decode_many, member_name
from mimkit.data.webdataset.index import ID_STRIDE, ShardIndex


class ShardSet:
    """Shards seen as one data set of `len(self)` samples, numbered shard after shard. It has what pretraining asks
    of a training set: its size, its labels (from the index: when every sample has a .cls) and `subset`, which
    decodes a few samples (the evaluators' fixed train subset, figures); ShardStream streams the rest."""

    targets = None  # geometric tasks are not streamed

    def __init__(
        self,
        shards: list[ShardIndex],
        decode_size: int,
        channels: int,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        decode: str = "pil",
    ):
        self.shards = shards
        self.decode_size, self.channels = decode_size, channels
        self.decode_on_device = decode == "device"  # data.decode=device: streamed JPEGs decoded by the device
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        self.counts = np.array([len(s) for s in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.shard_of = np.repeat(np.arange(len(shards)), self.counts)
        self.offsets = np.concatenate([s.offsets for s in shards]) if shards else np.zeros(0, np.int64)
        self.sizes = np.concatenate([s.sizes for s in shards]) if shards else np.zeros(0, np.int64)
        labels = np.concatenate([s.labels for s in shards]) if shards else np.zeros(0, np.int64)
        self.labels = torch.from_numpy(labels) if len(labels) and (labels >= 0).all() else None

    def __len__(self) -> int:
        return int(self.counts.sum())

    def ids(self, positions: np.ndarray) -> torch.Tensor:
        """Stable sample ids: (shard + 2) * ID_STRIDE + position in the shard; clear of the held-out ids."""
        shard = self.shard_of[positions]
        return torch.from_numpy((shard + 2) * ID_STRIDE + positions - self.starts[shard])

    def members(self, positions: np.ndarray) -> list[Member]:
        paths = [str(s.path) for s in self.shards]
        return [
            (paths[s], int(o), int(n))
            for s, o, n in zip(self.shard_of[positions], self.offsets[positions], self.sizes[positions])
        ]

    def decode(self, positions: np.ndarray, id_offset: int | None = None) -> tuple[ImageSet, list[str]]:
        """(the readable samples at these positions, names of the unreadable ones). Ids are `ids()`, or
        id_offset + position when given (held-out sets)."""
        positions = np.asarray(positions, dtype=np.int64)
        members = self.members(positions)
        images, readable = decode_many(members, self.decode_size, self.channels, self.num_workers)
        ids = self.ids(positions) if id_offset is None else torch.from_numpy(positions + id_offset)
        keep = torch.from_numpy(readable)
        labels = self.labels[torch.from_numpy(positions)][keep] if self.labels is not None else None
        skipped = [member_name(*members[i][:2]) for i in np.flatnonzero(~readable)]
        return ImageSet(torch.from_numpy(images)[keep], labels, ids[keep]), skipped

    def subset(self, positions: torch.Tensor | np.ndarray) -> ImageSet:
        """These samples decoded into memory (unreadable ones left out): what heldout.fixed_subset takes."""
        return self.decode(np.asarray(positions, dtype=np.int64))[0]

    def per_rank_samples(self, world_size: int) -> int:
        """Samples every rank gets in every epoch whatever the shard permutation: each rank is dealt at least
        len(shards) // world_size shards, so at least the sum of that many smallest shards."""
        return int(np.sort(self.counts)[: len(self.shards) // world_size].sum())
