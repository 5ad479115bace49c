"""Frozen features: an encoder from `--init` in eval mode without gradients, pooled per image, cached on disk.

Probes use no augmentation, so the features of a split never change: they are computed once, stored in
RUN_DIR/features/SPLIT.safetensors with a fingerprint of the weights and settings, and reused while it matches.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from mimkit.data.imageset import ImageSet
from mimkit.data.transforms import eval_transform
from mimkit.engine.atomic import save_safetensors
from mimkit.models.encoder import create_encoder
from mimkit.weights import Source, load_encoder_weights


def frozen_encoder(cfg: Any, source: Source, device: torch.device, what: str | None = None) -> nn.Module:
    """The source's encoder, no classifier, eval mode, requires_grad off (`what` names it in errors)."""
    pool = source.arch.get("global_pool", "token")
    encoder = create_encoder(cfg, fixed_sincos=False, num_classes=0, global_pool=pool)
    if source.state is not None:
        load_encoder_weights(encoder, source.state, what or f"init '{cfg.init}'", cfg.data.resize_init)
    encoder.requires_grad_(False)
    return encoder.to(device).eval()


@torch.no_grad()
def extract_features(
    encoder: nn.Module, data: ImageSet, cfg: Any, pool: str, device: torch.device, label: str = "features"
) -> torch.Tensor:
    """(N, D) float32 features: the class token after the final norm ('token') or the mean of the patch tokens
    ('avg', through fc_norm where the model has one). Shows progress (images, img/s, ETA): on a CPU a large split
    takes minutes."""
    import os

    from mimkit.engine.metrics import Progress, format_eta

    encoder.global_pool = pool
    d = cfg.data
    out = []
    batch = cfg.probe.feature_batch_size
    batches = -(-len(data) // batch)
    progress = Progress(batches, 0, os.environ.get("RANK", "0") == "0", max(1, batches // 10), label, f"{label} batch")
    t0 = time.time()
    try:
        for i, start in enumerate(range(0, len(data), batch), 1):
            images = data.images[start : start + batch].to(device)
            x = eval_transform(images, d.img_size, d.mean, d.std)
            out.append(encoder.forward_head(encoder.forward_features(x), pre_logits=True).float().cpu())
            seen, spent = min(start + batch, len(data)), time.time() - t0
            rate = seen / max(spent, 1e-9)
            progress.advance(
                i, f"{seen}/{len(data)} images  {rate:,.0f} img/s  eta {format_eta((len(data) - seen) / rate)}"
            )
    finally:
        progress.close()
    return torch.cat(out) if out else torch.zeros(0, encoder.embed_dim)


def weights_digest(encoder: nn.Module) -> str:
    """A hash of every weight: computed once per probe and shared by its splits' cache keys."""
    digest = hashlib.sha1()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def fingerprint(weights: str, data: ImageSet, cfg: Any, pool: str) -> str:
    """Changes whenever the weights, the images, the pooling or the input transform change."""
    digest = hashlib.sha1(weights.encode())
    digest.update(data.ids.numpy().tobytes())
    digest.update(json.dumps([pool, cfg.data.img_size, cfg.data.mean, cfg.data.std]).encode())
    return digest.hexdigest()


def cached_features(
    encoder: nn.Module,
    data: ImageSet,
    cfg: Any,
    pool: str,
    path: Path,
    device: torch.device,
    weights: str | None = None,
) -> tuple[torch.Tensor, bool]:
    """(features, reused?) for a split, from `path` when its fingerprint matches, else computed and stored.
    `weights` is the encoder's `weights_digest`, when the caller already has it."""
    key = fingerprint(weights or weights_digest(encoder), data, cfg, pool)
    if path.is_file():
        try:
            stored = load_file(str(path))
            if stored["fingerprint"].numpy().tobytes().decode() == key:
                return stored["features"], True
        except Exception:  # noqa: BLE001 - an unreadable cache is recomputed
            pass
    features = extract_features(encoder, data, cfg, pool, device, label=f"features ({path.stem})")
    save_safetensors(
        {
            "features": features.contiguous(),
            "fingerprint": torch.frombuffer(bytearray(key.encode()), dtype=torch.uint8),
        },
        path,
    )
    return features, False
