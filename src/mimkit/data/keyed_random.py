"""Counter-based random numbers: every random choice about a sample is a hash of (seed, stream, sample key).

This is why a run is reproducible without replaying RNG state: a sample's crop, flip and mask depend only on the
seed, the epoch and the sample's index. The same sample gets the same augmentation on one process or on N DDP
ranks, after a resume, on CPU or GPU; held-out masks are fixed by construction.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF

FIXED_EPOCH = -1  # the "epoch" that keys evaluation masks (and, with method.fixed_masks, every training mask)

# Streams keep the numbers drawn for different purposes independent.
STREAM_CROP = 1
STREAM_FLIP = 2
STREAM_MASK = 3
STREAM_JITTER = 4


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply) on int64 tensors holding values < 2**32."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def _mix32_int(x: int) -> int:
    x &= _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def sample_keys(indices: torch.Tensor, epoch: int) -> torch.Tensor:
    """One key per (sample index, epoch): the same image gets a new augmentation every epoch."""
    idx = indices.to(torch.int64) & _MASK32
    return _mix32(idx ^ _mix32_int(epoch * 0x9E3779B1 + 0x7F4A7C15))


def keyed_uniform(keys: torch.Tensor, n: int, seed: int, stream: int) -> torch.Tensor:
    """(len(keys), n) uniforms in [0, 1), a pure function of (seed, stream, key, column)."""
    salt = _mix32_int(_mix32_int(seed) ^ (stream * 0x85EBCA6B))
    k = _mix32((keys.to(torch.int64) & _MASK32) ^ salt)
    cols = torch.arange(n, device=keys.device, dtype=torch.int64)
    v = _mix32(((k[:, None] * 0x27D4EB2D) + cols[None, :] * 0x165667B1) & _MASK32)
    v = _mix32(v ^ salt)
    return (v >> 8).to(torch.float32) / 2**24  # 24 bits: exact in float32, so never rounds up to 1.0


def second_view_keys(keys: torch.Tensor) -> torch.Tensor:
    """Keys for an independent second augmentation of the same samples (two-view methods such as MoCo v3)."""
    return _mix32((keys.to(torch.int64) & _MASK32) ^ 0x5BD1E995)
