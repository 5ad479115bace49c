"""Supervised classification: the model (layer-wise lr decay, label smoothing, Mixup/CutMix), its options and its
registry entry."""

from mimkit.lazy import lazy_exports

# torch and timm load with the first of these that is read, not with the package (see mimkit/lazy.py)
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Supervised": "mimkit.methods.supervised.model",
        "build_supervised": "mimkit.methods.supervised.model",
        "layer_decay_groups": "mimkit.methods.supervised.model",
        "layer_id": "mimkit.methods.supervised.model",
        "SupervisedOptions": "mimkit.methods.supervised.options",
        "SPEC": "mimkit.methods.supervised.spec",
    },
)

__all__ = ["SPEC", "Supervised", "SupervisedOptions", "build_supervised", "layer_decay_groups", "layer_id"]
