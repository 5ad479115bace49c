"""Supervised classification's registry entry (the supervised baseline, and fine-tuning from `init`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimkit.lazy import deferred
from mimkit.methods.spec import MethodSpec
from mimkit.methods.supervised.options import SupervisedOptions, check_options

if TYPE_CHECKING:
    from mimkit.methods.supervised.model import Supervised


def build(cfg: Any) -> Supervised:
    from mimkit.methods.supervised.model import build_supervised
    from mimkit.models.encoder import create_encoder

    if cfg.model.num_classes is None:
        raise ValueError("model.num_classes is unknown: build the data first (it sets it) or set it")
    encoder = create_encoder(
        cfg, fixed_sincos=False, num_classes=cfg.model.num_classes, global_pool=cfg.model.global_pool
    )
    return build_supervised(cfg, encoder)


SPEC = MethodSpec(
    name="supervised",
    summary="supervised classification (DeiT-style from scratch, or fine-tuning from init)",
    loss_label="cross-entropy",
    build=build,
    options=SupervisedOptions,
    check_options=check_options,
    evaluators=deferred("mimkit.eval.accuracy", "accuracy_evaluators"),
    needs_labels=True,
    swin=True,
    beit=True,
    adopts=("global_pool",),
)
