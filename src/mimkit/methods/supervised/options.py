"""Supervised training's `method.*` keys (DeiT-style from scratch, and fine-tuning); `method.name=task` reads
layer_decay too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mimkit.errors import check


@dataclass
class SupervisedOptions:
    label_smoothing: float = 0.1
    mixup: float = 0.0  # timm Mixup alpha (0: off)
    cutmix: float = 0.0  # timm CutMix alpha (0: off)
    randaug: str | None = None  # timm RandAugment spec, e.g. rand-m9-mstd0.5-inc1 (None: off)
    layer_decay: float = 1.0  # layer-wise lr decay, scale = decay^(L+1-i) (1: off)


def check_options(meth: Any) -> None:
    check(0.0 <= meth.label_smoothing < 1.0, f"method.label_smoothing: {meth.label_smoothing} must be in [0, 1)")
    check(meth.mixup >= 0 and meth.cutmix >= 0, "method.mixup and method.cutmix must be >= 0")
    check(0.0 < meth.layer_decay <= 1.0, f"method.layer_decay: {meth.layer_decay} must be in (0, 1]")
    if meth.randaug is not None:
        check(
            meth.randaug.startswith("rand-"),
            f"method.randaug: '{meth.randaug}' is not a timm RandAugment spec (e.g. rand-m9-mstd0.5-inc1)",
        )
