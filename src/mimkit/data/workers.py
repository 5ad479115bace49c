"""Persistent worker processes for CPU-side data work (shard decoding, RandAugment): started once per run, they
leave signals to the trainer and die with it."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import Executor, ProcessPoolExecutor


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


def start_pool(workers: int) -> ProcessPoolExecutor | None:
    """`workers` persistent processes (forked on Linux: nothing to re-import), None for 0. Work sent to them must
    not run torch kernels: a forked child cannot use the parent's OpenMP thread pool."""
    if workers <= 0:
        return None
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_worker_init,
                               initargs=(os.getpid(),))


def stop_pool(pool: Executor) -> None:
    pool.shutdown(wait=True, cancel_futures=True)


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """(start, stop) of `parts` nearly equal consecutive slices of range(n) (fewer when n is small)."""
    step = max(1, -(-n // max(1, parts)))
    return [(i, min(n, i + step)) for i in range(0, n, step)]
