"""ShardStream: the micro-batch of (step, micro-step) for this rank, streamed from its shards: shard dealing,
shuffle buffer, decode-ahead in a thread and a worker pool (see docs/webdataset.md)."""

from __future__ import annotations

import hashlib
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import torch

from mimkit.data import device_decode
from mimkit.data.loader import augmented_batch, to_device
from mimkit.data.transforms import BatchAugment
from mimkit.data.webdataset.decode import (
    decode_members,
    decode_members_into,
    join_parts,
    member_name,
    read_members,
    read_members_into,
)
from mimkit.data.webdataset.paths import ShardError
from mimkit.data.webdataset.shardset import ShardSet
from mimkit.data.workers import SHARED_SLOTS, SharedSlots, split_evenly, start_pool, stop_pool
from mimkit.errors import ConfigError

PREFETCH = 2  # micro-batches decoded ahead of the one being trained on


def _generator(*parts: Any) -> torch.Generator:
    """A generator seeded by a hash of `parts`: independent streams for (seed, epoch, purpose, rank, ...)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def shuffle_buffer_order(n: int, size: int, generator: torch.Generator, limit: int | None = None) -> np.ndarray:
    """The first `limit` of 0..n-1 in the order a shuffle buffer of `size` emits them (WebDataset's shuffle: fill
    the buffer, then each output is a random slot, refilled from the stream). Only integers are shuffled."""
    limit = n if limit is None else min(limit, n)
    draws = torch.rand(limit, generator=generator, dtype=torch.float64).numpy()
    out = np.empty(limit, dtype=np.int64)
    buffer = list(range(min(size, n)))
    incoming = len(buffer)
    for k in range(limit):
        slot = int(draws[k] * len(buffer))
        out[k] = buffer[slot]
        if incoming < n:
            buffer[slot] = incoming
            incoming += 1
        else:  # the stream is exhausted: drain the buffer
            buffer[slot] = buffer[-1]
            buffer.pop()
    return out


class ShardStream:
    """TrainStream's interface (get(step, micro), epoch_of, batches_per_epoch, ...) over a ShardSet.

    Epoch e: the shards in a (seed, e) permutation, rank r takes every world_size-th from r, reads them in turn
    through a (seed, e, rank) shuffle buffer and keeps the first `per_rank_samples` of that stream (whole micro-
    batches). Batches are addressed like TrainStream's, so a resumed run reads exactly what an unbroken one did.
    Images are decoded by `data.num_workers` persistent processes, PREFETCH micro-batches ahead."""

    def __init__(
        self,
        data: ShardSet,
        augment: BatchAugment,
        micro_batch: int,
        accum_steps: int,
        rank: int,
        world_size: int,
        seed: int,
        device: torch.device,
        pre_augment=None,
        views: int = 1,
        log: Callable = print,
    ):
        if len(data.shards) < world_size:
            raise ConfigError(
                f"{len(data.shards)} training shard(s) for {world_size} processes: every process needs "
                "at least one shard per epoch; write more, smaller shards (write_shards per_shard=...)"
            )
        self.data, self.augment, self.pre_augment, self.views = data, augment, pre_augment, views
        self.micro_batch, self.accum_steps, self.device = micro_batch, accum_steps, device
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batches_per_epoch = data.per_rank_samples(world_size) // micro_batch
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"each process is sure of only {data.per_rank_samples(world_size)} samples per epoch, "
                f"fewer than one batch ({micro_batch}); lower train.batch_size or use more shards"
            )
        self.log = log if world_size == 1 else (lambda text: log(f"[rank {rank}] {text}"))
        self.skipped = 0  # unreadable images met so far (each replaced in its batch)
        self._next_report = 1
        self._orders: dict[int, np.ndarray] = {}
        self._orders_lock = threading.Lock()
        self._pending: dict[int, list[Future]] = {}
        # Decoded pixels (or, with data.decode=device, the JPEG bytes) come back through shared memory, one slot
        # per micro-batch in flight (the current one and PREFETCH ahead); made before the pool forks its workers,
        # so they inherit the slots.
        shared = data.num_workers > 0 and SHARED_SLOTS
        self._row_shape = (
            (device_decode.PAYLOAD_ROOM,)
            if data.decode_on_device
            else (data.channels, data.decode_size, data.decode_size)
        )
        self._slots = SharedSlots(PREFETCH + 1, micro_batch * int(np.prod(self._row_shape))) if shared else None
        self._pool = start_pool(data.num_workers, launch=True)  # forked now, from this thread, with the slots
        self._finalizer = (
            weakref.finalize(self, stop_pool, self._pool, [self._slots] if shared else [])
            if self._pool is not None
            else None
        )
        # data.decode=device decodes in this process, and building a batch on a GPU waits for the queued training
        # step (host-to-device index copies, nvjpeg): one thread decodes the next micro-batch meanwhile, so only it
        # waits. It alone touches the worker queue (_pending).
        self._ahead = ThreadPoolExecutor(1, "mimkit-decode", *_on_device(device)) if data.decode_on_device else None
        self._ahead_job: tuple[int, Future] | None = None

    @property
    def images_per_epoch(self) -> int:
        return self.batches_per_epoch * self.micro_batch * self.world_size

    def epoch_of(self, step: int) -> int:
        return (step * self.accum_steps) // self.batches_per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's sample positions (in the ShardSet) for `epoch`, in training order. (The decode thread asks
        too: one at a time.)"""
        with self._orders_lock:
            return self._epoch_order(epoch)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            while len(self._orders) >= 2:  # the current epoch and the next (prefetching across the boundary)
                self._orders.pop(min(self._orders))
            d = self.data
            shards = torch.randperm(len(d.shards), generator=_generator(self.seed, epoch, "shards")).numpy()
            mine = shards[self.rank :: self.world_size]
            stream = np.concatenate([np.arange(d.starts[s], d.starts[s] + d.counts[s]) for s in mine])
            buffer_rng = _generator(self.seed, epoch, "buffer", self.rank, self.world_size)
            length = self.batches_per_epoch * self.micro_batch
            self._orders[epoch] = stream[shuffle_buffer_order(len(stream), d.shuffle_buffer, buffer_rng, length)]
        return self._orders[epoch]

    def positions(self, index: int) -> np.ndarray:
        """The samples of micro-batch `index` (= step * accum_steps + micro)."""
        epoch, offset = divmod(index, self.batches_per_epoch)
        return self.epoch_order(epoch)[offset * self.micro_batch : (offset + 1) * self.micro_batch]

    def _submit(self, index: int) -> list[Future]:
        members = self.data.members(self.positions(index))
        size, channels = self.data.decode_size, self.data.channels
        parts = split_evenly(len(members), self.data.num_workers)
        if self._slots is not None:
            into = read_members_into if self.data.decode_on_device else decode_members_into
            return [self._pool.submit(into, members[i:j], size, channels, self._slots.key(index), i) for i, j in parts]
        return [self._pool.submit(self._work, members[i:j], size, channels) for i, j in parts]

    @property
    def _work(self) -> Callable:
        """What is done with a chunk of members: decode it, or read it for the device (data.decode)."""
        return read_members if self.data.decode_on_device else decode_members

    def _decoded(self, index: int) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
        """Micro-batch `index` decoded (uint8 on the host, or on the device with data.decode=device, where the
        decode thread then starts on the next one), and the next PREFETCH ones queued in the workers."""
        if self._ahead is None:
            return self._decode_now(index)
        job = self._ahead_job
        if job is None or job[0] != index:  # the first batch, or a jump (resume)
            if job is not None:
                job[1].exception()  # let it finish: it uses the worker queue and a shared slot
            job = (index, self._ahead.submit(self._decode_now, index))
        result = job[1].result()
        self._ahead_job = (index + 1, self._ahead.submit(self._decode_now, index + 1))
        return result

    def _decode_now(self, index: int) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
        d, parts = self.data, self._read(index)
        shared = self._slots is not None  # (only made for a worker pool)
        if not d.decode_on_device:
            if not shared:
                return join_parts(parts)
            readable = np.concatenate(parts)
            return self._slots.array(index, self._row_shape)[: len(readable)], readable
        batch = device_decode.join(parts)
        if shared:
            batch.take_spans(self._slots.buffer(index))
        return device_decode.decode_batch(batch, d.decode_size, d.channels, self.device)

    def _read(self, index: int) -> list[Any]:
        """The workers' parts of micro-batch `index` (decoded, or read for the device), prefetching behind it."""
        if self._pool is None:
            return [self._work(self.data.members(self.positions(index)), self.data.decode_size, self.data.channels)]
        current = self._pending.pop(index, None)
        for stale in [k for k in self._pending if not index < k <= index + PREFETCH]:
            _drop(self._pending.pop(stale))  # (a jump: resume) before its slot is handed out again
        current = current or self._submit(index)
        for ahead in range(index + 1, index + 1 + PREFETCH):
            if ahead not in self._pending:
                self._pending[ahead] = self._submit(ahead)
        return [future.result() for future in current]

    def _stand_ins(self, readable: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Row i of the batch takes decoded row take[i]: an unreadable image is replaced by the readable images of
        its own micro-batch in turn, so the batch keeps its size and no other batch moves (determinism)."""
        take = np.arange(len(readable))
        bad = np.flatnonzero(~readable)
        if len(bad) == 0:
            return take
        good = np.flatnonzero(readable)
        example = member_name(*self.data.members(positions[bad[:1]])[0][:2])
        if len(good) == 0:
            raise ShardError(
                f"no image of a whole batch of {len(readable)} could be decoded (e.g. {example}): "
                "are the shards damaged?"
            )
        take[bad] = good[np.arange(len(bad)) % len(good)]
        self.skipped += len(bad)
        if self.skipped >= self._next_report:  # 1, 2, 4, 8, ... : a damaged data set does not flood the log
            self.log(
                f"[data] warning: {self.skipped} unreadable image(s) skipped so far, latest {example} (each "
                "replaced by another image of its batch)"
            )
            self._next_report = 2 * self.skipped
        return take

    def get(self, step: int, micro: int) -> dict[str, Any]:
        """The augmented micro-batch `micro` of optimizer step `step` for this process."""
        index = step * self.accum_steps + micro
        positions = self.positions(index)
        images, readable = self._decoded(index)
        take = self._stand_ins(readable, positions)
        positions = positions[take]
        if not torch.is_tensor(images):
            images = torch.from_numpy(images[take])  # a copy: the shared slot is reused
        elif not (take == np.arange(len(take))).all():  # (on a GPU, without waiting for the queued step)
            images = images[to_device(torch.from_numpy(take), images.device)]
        batch = augmented_batch(
            images,
            self.data.ids(positions),
            index // self.batches_per_epoch,
            self.augment,
            self.device,
            self.pre_augment,
            self.views,
        )
        if self.data.labels is not None:
            batch["labels"] = to_device(self.data.labels[torch.from_numpy(positions)], self.device)
        return batch

    def close(self) -> None:
        """Stop the decode workers and RandAugment's (also done at exit and when the stream is garbage-collected)."""
        if self._ahead is not None:
            self._ahead.shutdown(wait=True, cancel_futures=True)  # before the queue it uses is cleared
            self._ahead_job = None
        for futures in self._pending.values():
            for future in futures:
                future.cancel()
        self._pending.clear()
        if self._finalizer is not None:  # stops the pool, then closes the shared slots (made only with a pool)
            self._finalizer()
        close = getattr(self.pre_augment, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "ShardStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _on_device(device: torch.device) -> tuple:
    """(initializer, initargs) making `device` the decode thread's current CUDA device (each DDP rank its own)."""
    return (torch.cuda.set_device, (device,)) if device.type == "cuda" else (None, ())


def _drop(futures: list[Future]) -> None:
    """Cancel queued work, then wait out work already running (it writes into a shared slot about to be reused)."""
    for future in [f for f in futures if not f.cancel()]:
        future.exception()
