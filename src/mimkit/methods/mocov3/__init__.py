"""MoCo v3 for ViT (Chen, Xie, He 2021): the model, its options and its registry entry."""

from mimkit.lazy import lazy_exports

# torch and timm load with the first of these that is read, not with the package (see mimkit/lazy.py)
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "MoCoV3": "mimkit.methods.mocov3.model",
        "build_mocov3": "mimkit.methods.mocov3.model",
        "contrastive_loss": "mimkit.methods.mocov3.model",
        "momentum_at": "mimkit.methods.mocov3.model",
        "MoCoV3Options": "mimkit.methods.mocov3.options",
        "SPEC": "mimkit.methods.mocov3.spec",
    },
)

__all__ = ["SPEC", "MoCoV3", "MoCoV3Options", "build_mocov3", "contrastive_loss", "momentum_at"]
