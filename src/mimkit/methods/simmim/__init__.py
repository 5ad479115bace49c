"""SimMIM (Xie et al. 2022): the model and its registry entry."""

from mimkit.lazy import lazy_exports

# torch and timm load with the first of these that is read, not with the package (see mimkit/lazy.py)
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SimMIM": "mimkit.methods.simmim.model",
        "build_simmim": "mimkit.methods.simmim.model",
        "is_linear_pixel_head": "mimkit.methods.simmim.model",
        "linear_pixel_head": "mimkit.methods.simmim.model",
        "masked_pixel_l1": "mimkit.methods.simmim.model",
        "SimMIMOptions": "mimkit.methods.simmim.options",
        "SPEC": "mimkit.methods.simmim.spec",
    },
)

__all__ = [
    "SPEC",
    "SimMIM",
    "SimMIMOptions",
    "build_simmim",
    "is_linear_pixel_head",
    "linear_pixel_head",
    "masked_pixel_l1",
]
