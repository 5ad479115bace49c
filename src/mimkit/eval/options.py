"""The `probe:` config section (frozen-encoder evaluation: linear probe and kNN) and its checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mimkit.errors import check, one_of

PIXELS = "pixels"  # the `init` value of the raw-pixel baseline (knn, linprobe and compare only)


@dataclass
class ProbeConfig:
    """Frozen-encoder evaluation: linear probe (MAE protocol) and kNN (DINO protocol)."""

    pool: str = "token"  # token (class token) | avg (mean of patch tokens)
    epochs: int = 100
    optimizer: str = "lars"  # lars | sgd
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256
    # when given, base_lr is chosen from these on a validation split of the training images (val_fraction of them,
    # class-balanced), then the head is trained again on every training image: a probe's accuracy swings by tens
    # of points with its lr, and the best lr differs between encoders (docs/evaluation.md)
    lr_grid: list[float] = field(default_factory=list)
    val_fraction: float = 0.1
    weight_decay: float = 0.0
    batch_size: int = 1024
    warmup_epochs: int = 10
    knn_k: int = 20
    knn_temperature: float = 0.07
    feature_batch_size: int = 512


def validate_probe(cfg: Any) -> None:
    p = cfg.probe
    one_of("probe.pool", p.pool, ["token", "avg"])
    one_of("probe.optimizer", p.optimizer, ["lars", "sgd"])
    for key in ("epochs", "base_lr", "batch_size", "knn_k", "knn_temperature", "feature_batch_size"):
        check(getattr(p, key) > 0, f"probe.{key}: {getattr(p, key)} must be positive")
    check(p.weight_decay >= 0, f"probe.weight_decay: {p.weight_decay} must be >= 0")
    check(all(lr > 0 for lr in p.lr_grid), f"probe.lr_grid: {p.lr_grid}: every learning rate must be positive")
    check(0 < p.val_fraction < 1, f"probe.val_fraction: {p.val_fraction} must be in (0, 1)")
    check(0 <= p.warmup_epochs <= p.epochs, f"probe.warmup_epochs: {p.warmup_epochs} must be in [0, probe.epochs]")
