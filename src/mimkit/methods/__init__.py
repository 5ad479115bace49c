"""Training objectives, one package each (mae/, simmim/, supervised/, mocov3/, task/, distill/), collected by the
registry. `build_method(cfg)` turns a resolved config into a Method module through its registry entry."""

from __future__ import annotations

from typing import Any

from mimkit.methods.base import Method
from mimkit.methods.distill import Distill
from mimkit.methods.mae import MAE
from mimkit.methods.mocov3 import MoCoV3
from mimkit.methods.registry import get, method_spec, register
from mimkit.methods.simmim import SimMIM
from mimkit.methods.spec import Masking, MethodSpec
from mimkit.methods.supervised import Supervised
from mimkit.methods.task import TaskModel

__all__ = [
    "MAE",
    "Distill",
    "Masking",
    "Method",
    "MethodSpec",
    "MoCoV3",
    "SimMIM",
    "Supervised",
    "TaskModel",
    "build_method",
    "get",
    "method_spec",
    "register",
]


def build_method(cfg: Any) -> Method:
    """A fresh Method for a resolved config (see config.resolved), on the fast path unless train.fast_path=false."""
    method = method_spec(cfg).build(cfg)
    method.fast_path = cfg.train.fast_path
    return method
