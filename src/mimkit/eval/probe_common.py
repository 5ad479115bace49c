"""What linprobe and knn share: resolve `--init`, load the data, freeze the encoder, cache features per split.

`init=pixels` is the baseline that learns nothing: the features are the encoder's own input (resized, normalised,
flattened pixels), so kNN and the linear probe run their usual protocols on them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from mimkit.config import Config, ConfigError, resolved
from mimkit.data.datasets import DataBundle, build_data
from mimkit.data.webdataset.build import require_in_memory
from mimkit.engine.distributed import pick_device
from mimkit.eval.baselines import pixel_features
from mimkit.eval.features import cached_features, frozen_encoder, weights_digest
from mimkit.eval.options import PIXELS
from mimkit.weights import Source, adopt_source, resolve_source


@dataclass
class ProbeSetup:
    cfg: Config
    source: Source
    data: DataBundle
    num_classes: int
    train_features: torch.Tensor
    heldout_features: torch.Tensor
    reused: bool


def labelled_data(cfg: Config, log=print) -> tuple[Config, DataBundle, int]:
    """The data set, in memory and labelled (probes read every training image), and its number of classes (also
    written into cfg.model.num_classes)."""
    data = build_data(cfg, log)
    require_in_memory(data, "linprobe and knn (features of every training image)")
    if data.train.labels is None or data.heldout.labels is None:
        raise ConfigError("linprobe and knn need labelled data (Fashion-MNIST or a class-folder tree)")
    num_classes = len(data.classes) if data.classes else int(data.train.labels.max()) + 1
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))
    return cfg, data, num_classes


def probe_setup(cfg: Config, run_dir: Path, log=print) -> ProbeSetup:
    if cfg.init == PIXELS:
        return pixel_setup(cfg, run_dir, log)
    cfg = resolved(cfg)
    source = resolve_source(cfg.init, cfg)
    cfg = adopt_source(cfg, source)
    cfg, data, num_classes = labelled_data(cfg, log)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)  # a scratch encoder is the same random network every time
    encoder = frozen_encoder(cfg, source, device)
    run_dir.mkdir(parents=True, exist_ok=True)
    pool, weights = cfg.probe.pool, weights_digest(encoder)
    train, reused_train = cached_features(
        encoder, data.train, cfg, pool, run_dir / "features" / "train.safetensors", device, weights
    )
    held, reused_held = cached_features(
        encoder, data.heldout, cfg, pool, run_dir / "features" / "heldout.safetensors", device, weights
    )
    log(
        f"[probe] {source.description}: features {tuple(train.shape)} train, {tuple(held.shape)} held-out "
        f"({'reused from cache' if reused_train and reused_held else 'computed'})"
    )
    return ProbeSetup(cfg, source, data, num_classes, train, held, reused_train and reused_held)


def pixel_setup(cfg: Config, run_dir: Path, log=print) -> ProbeSetup:
    """The raw-pixel baseline: no encoder, the features are the images as the encoders receive them."""
    cfg, data, num_classes = labelled_data(resolved(cfg), log)
    run_dir.mkdir(parents=True, exist_ok=True)
    train, held = pixel_features(data.train, cfg), pixel_features(data.heldout, cfg)
    log(f"[probe] raw pixels: features {tuple(train.shape)} train, {tuple(held.shape)} held-out")
    source = Source("pixels", "raw pixels (no encoder)", None, {}, {})
    return ProbeSetup(cfg, source, data, num_classes, train, held, False)
