"""SimMIM (Xie et al. 2022): the model and its registry entry."""

from mimkit.methods.simmim.model import (
    SimMIM,
    build_simmim,
    is_linear_pixel_head,
    linear_pixel_head,
    masked_pixel_l1,
)
from mimkit.methods.simmim.options import SimMIMOptions
from mimkit.methods.simmim.spec import SPEC

__all__ = [
    "SPEC",
    "SimMIM",
    "SimMIMOptions",
    "build_simmim",
    "is_linear_pixel_head",
    "linear_pixel_head",
    "masked_pixel_l1",
]
