"""Keep freed host memory for reuse instead of handing it back to the OS.

Why: PyTorch allocates CPU tensors with glibc's malloc. With glibc's defaults, large blocks are mmap'd and every
free gives them back to the OS (or trims the heap), so the next step's activations land on fresh pages, and the
kernel faults in and zeroes each 4 KiB page on first touch. A tiny-preset MAE step on a 2-core CPU took
7,000-13,000 page faults and 12-40 ms of system time (summed over its threads) per step that way, about 100 and
1 ms tuned (docs/performance.md). Raising the mmap threshold to its maximum and never trimming the heap makes a
training loop reuse the same pages every step.

Process-wide and glibc only: a no-op elsewhere (macOS, musl), and off with MIMKIT_HOST_MALLOC=0. The cost is that
the process keeps its peak heap until it exits, which is what a training loop reuses anyway. Being process-wide, it
is the CLI's to set (`mimkit.cli.main`), never a library call's: a Python program that trains through the API calls
tune_host_malloc() itself if it wants it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit: blocks above it are still mmap'd
TOP_PAD = 64 * 1024 * 1024  # grow the heap in large steps: fewer brk calls while a step's peak is first reached
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of free heap top, i.e. never trim

_state: str | None = None


def tune_host_malloc() -> str:
    """Apply the settings once per process. Returns 'tuned', 'off' (MIMKIT_HOST_MALLOC=0), 'not glibc', or
    'failed' (mallopt refused a value); later calls return the first call's answer."""
    global _state
    if _state is None:
        _state = _apply()
    return _state


def host_malloc_state() -> str:
    """What tune_host_malloc did in this process, without doing it: its answer, or 'default' (never called)."""
    return _state or "default"


def _apply() -> str:
    if os.environ.get("MIMKIT_HOST_MALLOC", "1").strip().lower() in ("0", "false", "off", "no"):
        return "off"
    if not sys.platform.startswith("linux"):
        return "not glibc"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc's own symbol: musl has mallopt too, but ignores these parameters
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "not glibc"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    accepted = [
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
    ]
    return "tuned" if all(accepted) else "failed"  # every setting is tried, whatever the others did
