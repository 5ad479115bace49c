"""Training objectives, one package each (mae/, simmim/, supervised/, mocov3/, task/, distill/), collected by the
registry. `build_method(cfg)` turns a resolved config into a Method module through its registry entry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimkit.lazy import lazy_exports
from mimkit.methods.registry import get, method_spec, register
from mimkit.methods.spec import Masking, MethodSpec

if TYPE_CHECKING:
    from mimkit.methods.base import Method

# torch and timm load with the first of these that is read, not with the package (see mimkit/lazy.py)
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Method": "mimkit.methods.base",
        "Distill": "mimkit.methods.distill",
        "MAE": "mimkit.methods.mae",
        "MoCoV3": "mimkit.methods.mocov3",
        "SimMIM": "mimkit.methods.simmim",
        "Supervised": "mimkit.methods.supervised",
        "TaskModel": "mimkit.methods.task",
    },
)

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
