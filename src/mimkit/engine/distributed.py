"""torchrun integration: env:// init, nccl on GPU and gloo on CPU, rank helpers, metric reduction."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from mimkit.errors import ConfigError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' requested but no CUDA device is available (use --set device=cpu)")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(requested_device: str, timeout_s: float = 300.0) -> DistEnv:
    """One process: nothing to do. Under torchrun (WORLD_SIZE > 1): join the process group via env://. A collective
    that waits longer than `timeout_s` (a rank stopped, crashed or hung) fails on the others instead of blocking."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return DistEnv(rank, world, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum floats over all ranks (float64, on the device the backend needs)."""
    if not env.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_flag(flag: bool, env: DistEnv) -> bool:
    """True on every rank when any rank says True (e.g. a signal reached one process)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_ranks_true(flag: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """A bool tensor that is True only where it is True on every rank, reduced on the device (stream-ordered: no
    host wait), so every rank takes the same decision, e.g. whether to skip a step with a non-finite loss."""
    if not env.enabled:
        return flag
    t = flag.to(torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.bool()
