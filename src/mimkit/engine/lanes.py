"""Lanes: several trainings at once on one machine, each in its own worker process with a share of the CPU threads.
Small models use two cores poorly from one process (a 0.26M-parameter distillation student ran at 355 img/s with
two threads alone, 270-300 img/s with one thread while a femto student trained beside it), so a sweep
(`--parallel`) and a comparison (`--lanes`) run their independent trainings side by side. Shared here: the
worker's set-up, and how a pool stops on Ctrl-C or SIGTERM without leaving a worker training."""

from __future__ import annotations

import os
from concurrent.futures import as_completed
from pathlib import Path
from typing import Iterator

STOP_GRACE_S = 120  # time for running trainings to write their checkpoint after SIGTERM


def lane_threads(lanes: int) -> int | None:
    """Threads per lane: the cores this process may use split evenly (at least one each); None for one lane
    (torch's own default)."""
    return max(1, available_cores() // lanes) if lanes > 1 else None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset or a SLURM allocation), not the
    machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def start_lane(threads: int | None) -> None:
    """Set up a worker process as the CLI sets up itself: its share of threads, then the host allocator."""
    from mimkit.engine.host_malloc import tune_host_malloc

    if threads:
        import torch

        torch.set_num_threads(threads)
    tune_host_malloc()  # this worker is a mimkit program, as the CLI is: see engine/host_malloc.py


def spawn_pool(lanes: int):
    """A pool of `lanes` fresh interpreters (spawn: forking a process that already runs torch's thread pools can
    deadlock)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(lanes, mp_context=multiprocessing.get_context("spawn"))


def completed_or_stopped(futures: dict, pool, stop_file: Path) -> Iterator:
    """Futures as they finish. On Ctrl-C or SIGTERM: nothing new starts (queued work is cancelled, and a worker
    that already took some finds `stop_file`), running trainings get SIGTERM (they checkpoint and stop), stragglers
    are killed after a grace period (checkpoint writes are atomic), so no worker is left training; then
    KeyboardInterrupt (Terminated for SIGTERM)."""
    import signal

    from mimkit.errors import Terminated

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Terminated

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield from as_completed(futures)
    except KeyboardInterrupt:
        stop_workers(futures, pool, stop_file)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_workers(futures: dict, pool, stop_file: Path) -> None:
    """Stop a pool's work at once, keeping what it wrote: see completed_or_stopped."""
    from concurrent.futures import wait

    from mimkit.compat import live_worker_processes  # compat imports torch: not needed to read a grid

    stop_file.parent.mkdir(parents=True, exist_ok=True)
    stop_file.touch()
    processes = live_worker_processes(pool)
    for process in processes:
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    wait([f for f in futures if not f.cancelled()], timeout=STOP_GRACE_S)
    for process in processes:
        if process.is_alive():
            process.kill()
