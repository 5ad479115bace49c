"""Supervised classification's registry entry (the supervised baseline, and fine-tuning from `init`)."""

from __future__ import annotations

from typing import Any

from mimkit.eval.accuracy import accuracy_evaluators
from mimkit.methods.spec import MethodSpec
from mimkit.methods.supervised.model import Supervised, build_supervised
from mimkit.methods.supervised.options import SupervisedOptions, check_options
from mimkit.models.encoder import create_encoder


def build(cfg: Any) -> Supervised:
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
    evaluators=accuracy_evaluators,
    needs_labels=True,
    swin=True,
    beit=True,
    adopts=("global_pool",),
)
