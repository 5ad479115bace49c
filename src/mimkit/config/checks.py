"""Validation and derived defaults of a whole Config: each domain checks and resolves its own section (see
schema.py for where each lives); this module only calls them, in an order where every check can read what it
depends on."""

from __future__ import annotations

import dataclasses

from mimkit.config.schema import DEVICES, Config
from mimkit.data.options import resolve_data, validate_data
from mimkit.engine.options import resolve_train, validate_train
from mimkit.errors import check, one_of
from mimkit.eval.options import validate_probe
from mimkit.methods import registry
from mimkit.methods.distill.options import check_section as check_distill_section
from mimkit.models.options import resolve_model, validate_model


def validate(cfg: Config) -> None:
    """Impossible values fail here, before data or models are built."""
    one_of("device", cfg.device, list(DEVICES))
    check(0 <= cfg.seed < 2**63, f"seed: {cfg.seed} must be in [0, 2**63) (a 64-bit signed integer)")
    validate_data(cfg)
    registry.check_method_options(cfg)
    validate_probe(cfg)
    check_distill_section(cfg)
    model = validate_model(cfg)  # the resolved preset: the method's checks read its patch size and kind
    registry.validate_method(cfg, model)
    validate_train(cfg)


def resolved(cfg: Config) -> Config:
    """Fill every derived default in (mask ratio, crop scale, lr, ...) so the saved config says what ran."""
    sections = [f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]
    cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name)) for name in sections})
    resolve_data(cfg, registry.method_spec(cfg).crop_scale)
    resolve_model(cfg)
    registry.resolve_method(cfg)  # after the model: the mask cell defaults to a multiple of its patch size
    resolve_train(cfg)
    return cfg
