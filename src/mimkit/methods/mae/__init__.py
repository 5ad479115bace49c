"""MAE (He et al. 2022): the model (model.py, named as the paper's steps), its options and its registry entry."""

from mimkit.lazy import lazy_exports

# torch and timm load with the first of these that is read, not with the package (see mimkit/lazy.py)
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "MAE": "mimkit.methods.mae.model",
        "build_mae": "mimkit.methods.mae.model",
        "MAEOptions": "mimkit.methods.mae.options",
        "SPEC": "mimkit.methods.mae.spec",
    },
)

__all__ = ["MAE", "MAEOptions", "SPEC", "build_mae"]
