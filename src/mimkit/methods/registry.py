"""The method registry: one MethodSpec per training objective, and the only place a method's name decides anything.

Built in: mae, simmim, supervised, mocov3, task, distill (in that order, which is also the order of their keys in
a saved config). `register(spec)` adds another (see docs/guide.md, "Add a method"); the `method:` config section
is then the shared keys (spec.MethodConfig) plus every registered method's options, so a recipe or a saved run
keeps one flat `method:` section whatever the method.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from mimkit.data.mask_layout import default_mask_patch_size
from mimkit.errors import ConfigError, check
from mimkit.methods.distill.spec import SPEC as DISTILL
from mimkit.methods.mae.spec import SPEC as MAE
from mimkit.methods.mocov3.spec import SPEC as MOCOV3
from mimkit.methods.simmim.spec import SPEC as SIMMIM
from mimkit.methods.spec import MethodConfig, MethodSpec, check_common, check_mask_counts, mask_defaults
from mimkit.methods.supervised.spec import SPEC as SUPERVISED
from mimkit.methods.task.spec import SPEC as TASK

_SPECS: dict[str, MethodSpec] = {}
_config_class: type | None = None


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method. Its name and its options' keys must be new: every method's keys share the `method:` section."""
    global _config_class
    if spec.name in _SPECS:
        raise ValueError(f"method '{spec.name}' is already registered")
    taken = {f.name: "the shared keys" for f in dataclasses.fields(MethodConfig)}
    for other in _SPECS.values():
        taken.update({f.name: f"method '{other.name}'" for f in other.option_fields()})
    for f in spec.option_fields():
        if f.name in taken:
            raise ValueError(f"method '{spec.name}': option method.{f.name} is already declared by {taken[f.name]}")
    _SPECS[spec.name] = spec
    _config_class = None
    return spec


def unregister(name: str) -> None:
    """Remove a method registered with `register` (tests and notebooks)."""
    global _config_class
    _SPECS.pop(name, None)
    _config_class = None


def names() -> list[str]:
    return list(_SPECS)


def get(name: str) -> MethodSpec:
    """The spec of a registered method, or a ConfigError that lists them."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ConfigError(f"method.name: '{name}' is not one of {', '.join(_SPECS)}")
    return spec


def method_spec(cfg: Any) -> MethodSpec:
    """The spec of a config's method."""
    return get(cfg.method.name)


def specs() -> list[MethodSpec]:
    return list(_SPECS.values())


def method_config_class() -> type:
    """The `method:` section's dataclass: MethodConfig's shared keys, then each registered method's options."""
    global _config_class
    if _config_class is None:
        extra = []
        for spec in _SPECS.values():
            if spec.options is None:
                continue
            hints = typing.get_type_hints(spec.options)
            for f in spec.option_fields():
                default = (
                    dataclasses.field(default_factory=f.default_factory)
                    if f.default_factory is not dataclasses.MISSING
                    else f.default
                )
                extra.append((f.name, hints[f.name], default))
        _config_class = dataclasses.make_dataclass("MethodSection", extra, bases=(MethodConfig,))
        _config_class.__module__ = __name__  # pickles as mimkit.methods.registry.MethodSection (see __getattr__)
        _config_class.__doc__ = MethodConfig.__doc__
    return _config_class


def check_method_options(cfg: Any) -> None:
    """The `method:` section's own checks: a registered name, the shared keys, every method's options (every config
    has every registered method's keys)."""
    meth = cfg.method
    get(meth.name)
    check_common(meth)
    for spec in _SPECS.values():
        if spec.check_options is not None:
            spec.check_options(meth)


def validate_method(cfg: Any, model: Any) -> None:
    """The chosen method against the rest of the config; `model` is the resolved preset (models.presets)."""
    spec, meth, img = get(cfg.method.name), cfg.method, cfg.data.img_size
    check(
        not model.is_swin or spec.swin,
        f"method.name={meth.name} needs a ViT; a SwinV2 ('{cfg.model.name}') "
        f"trains with {' or '.join(s.name for s in _SPECS.values() if s.swin)}",
    )
    check(
        cfg.model.family == "vit" or model.is_swin or spec.beit,
        f"model.family={cfg.model.family} trains with {' or '.join(s.name for s in _SPECS.values() if s.beit)}; "
        f"method.name={meth.name} needs model.family=vit",
    )
    if meth.mask_patch_size is not None:
        check(
            meth.mask_patch_size % model.patch_size == 0 and img % meth.mask_patch_size == 0,
            f"method.mask_patch_size: {meth.mask_patch_size} must be a multiple of the patch size "
            f"{model.patch_size} and divide data.img_size {img}",
        )
    check(
        not meth.fixed_masks or spec.fixed_masks,
        f"method.fixed_masks=true: method.name={meth.name} does not support fixed masks; it is for "
        f"{' and '.join(s.name for s in _SPECS.values() if s.fixed_masks)}",
    )
    if spec.masking is not None:
        ratio = meth.mask_ratio if meth.mask_ratio is not None else spec.masking.ratio
        check_mask_counts(cfg, model.patch_size, ratio, meth.mask_type or spec.masking.kind, "method.mask_ratio")
    if spec.validate is not None:
        spec.validate(cfg, model)


def resolve_method(cfg: Any) -> None:
    """The method's derived defaults (mask settings), in place on a resolved copy whose model is resolved."""
    spec, meth = get(cfg.method.name), cfg.method
    masking = mask_defaults(spec)
    if meth.mask_ratio is None:
        meth.mask_ratio = masking.ratio
    if meth.mask_type is None:
        meth.mask_type = masking.kind
    if meth.mask_patch_size is None:
        meth.mask_patch_size = default_mask_patch_size(cfg.data.img_size, cfg.model.patch_size)
    if spec.resolve is not None:
        spec.resolve(cfg)


def __getattr__(name: str) -> Any:
    if name == "MethodSection":  # the composed class, for pickle and for `from ... import MethodSection`
        return method_config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _spec in (MAE, SIMMIM, SUPERVISED, MOCOV3, TASK, DISTILL):
    register(_spec)
