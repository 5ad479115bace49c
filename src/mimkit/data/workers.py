"""Persistent worker processes for CPU-side data work (shard decoding, RandAugment): started once per run, they
leave signals to the trainer and die with it, and hand large results back through shared memory."""

from __future__ import annotations

import ctypes
import itertools
import mmap
import multiprocessing
import os
import signal
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Iterable

import numpy as np


def _worker_init(parent: int) -> None:
    """Workers leave Ctrl-C and SIGTERM (sent to the whole process group) to the trainer, which
    checkpoints and then closes them, and they die with their parent even when it is killed outright: no
    orphans."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def start_pool(workers: int, launch: bool = False) -> ProcessPoolExecutor | None:
    """`workers` persistent processes (forked on Linux: nothing to re-import), None for 0. Work sent to them must
    not run torch kernels: a forked child cannot use the parent's OpenMP thread pool. They are forked at the first
    submit, or now with `launch` (from the calling thread, with the shared slots that exist now)."""
    if workers <= 0:
        return None
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context(method), initializer=_worker_init, initargs=(os.getpid(),)
    )
    if launch:
        pool.submit(os.getpid).result()
    return pool


def stop_pool(pool: Executor, slots: Iterable["SharedSlots"] = ()) -> None:
    """Shut the pool down, then forget the shared slots its workers wrote into (a finalizer's one call)."""
    pool.shutdown(wait=True, cancel_futures=True)
    for made in slots:
        made.close()


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """(start, stop) of `parts` nearly equal consecutive slices of range(n) (fewer when n is small)."""
    step = max(1, -(-n // max(1, parts)))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


# ------------------------------------------------------------------------------------------- shared result slots
SHARED_SLOTS = sys.platform.startswith("linux")  # forked workers inherit the buffers; spawned ones would not
_SLOTS: dict[int, mmap.mmap] = {}  # every live buffer of this process, by key: what forked workers look up
_NEXT_KEY = itertools.count()


class SharedSlots:
    """`count` buffers of `nbytes` in anonymous shared memory, one per batch in flight, that workers write their
    results into instead of pickling them back through a pipe (about 200 MB/s on the 2-core development machine:
    a 224 px batch of 256 took 0.25 s to come back). Forked workers see the buffers that exist when the pool forks
    them (at its first submit, or in start_pool with launch=True): create the slots before that. Only where
    SHARED_SLOTS (Linux)."""

    def __init__(self, count: int, nbytes: int):
        self.nbytes = nbytes
        self.keys = [next(_NEXT_KEY) for _ in range(count)]
        for key in self.keys:
            _SLOTS[key] = mmap.mmap(-1, max(1, nbytes))

    def key(self, index: int) -> int:
        """The slot of batch `index` (at most `count` batches may be in flight at once)."""
        return self.keys[index % len(self.keys)]

    def buffer(self, index: int) -> memoryview:
        """Batch `index`'s slot as raw bytes (no copy)."""
        return memoryview(_SLOTS[self.key(index)])

    def array(self, index: int, row_shape: tuple[int, ...]) -> np.ndarray:
        """Batch `index`'s slot as uint8 rows of `row_shape` (no copy)."""
        return slot_array(self.key(index), row_shape)

    def close(self) -> None:
        """Forget the buffers; the memory goes once the last view of it (here or in a worker) is gone."""
        for key in self.keys:
            _SLOTS.pop(key, None)


def slot_array(key: int, row_shape: tuple[int, ...]) -> np.ndarray:
    """Slot `key` as uint8 rows of `row_shape`, as many as fit (in the process that made it, or in a worker forked
    after that)."""
    buffer = _SLOTS[key]
    row = int(np.prod(row_shape))
    return np.frombuffer(buffer, dtype=np.uint8, count=len(buffer) // row * row).reshape(-1, *row_shape)
