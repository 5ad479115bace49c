"""Package attributes that load on first use (PEP 562), so that `import mimkit.methods.mae.spec` (which the config
needs) does not import torch and timm through its package's `__init__`: a config error then answers in well under
a second. Lazy for start-up time only, never to hide an import cycle (tests/test_imports.py)."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, where: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: each name in `where` is imported from its module when first read."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:  # the lazy names and what the package already holds
        return sorted(set(where) | set(vars(sys.modules[package])))

    return __getattr__, __dir__


def deferred(module: str, name: str) -> Callable[..., Any]:
    """A function that imports `module.name` at its first call and calls it: for registry entries, which the
    config reads, pointing at code that needs torch."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{module}.{name}, imported at the first call."
    return call
