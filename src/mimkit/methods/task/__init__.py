"""Geometric task heads (localisation, rotation, combined): the model and its registry entry."""

from mimkit.lazy import lazy_exports

# torch and timm load with the first of these that is read, not with the package (see mimkit/lazy.py)
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "TaskModel": "mimkit.methods.task.model",
        "build_task": "mimkit.methods.task.model",
        "SPEC": "mimkit.methods.task.spec",
    },
)

__all__ = ["SPEC", "TaskModel", "build_task"]
