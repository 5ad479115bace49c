"""The models an analysis looks at: `[NAME=]SOURCE` specs (run directories of any method, exported encoders,
timm:NAME, scratch) loaded as frozen timm ViTs, each with its own input size and normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkit.analysis.stats import ViTGeometry
from mimkit.config import Config, ConfigError
from mimkit.data.transforms import eval_transform, luminance
from mimkit.eval.compare import model_name, source_of
from mimkit.eval.features import frozen_encoder
from mimkit.weights import adopt_source, resolve_source


@dataclass
class AnalysedModel:
    label: str
    source: str
    description: str
    cfg: Config  # the base config with the source's architecture and input size adopted
    encoder: nn.Module
    geometry: ViTGeometry

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (batch, channels, H, W) -> the model's normalised input (channels converted, resized)."""
        d = self.cfg.data
        return eval_transform(match_channels(images, d.in_chans), d.img_size, d.mean, d.std)

    def info(self) -> dict:
        g, m = self.geometry, self.cfg.model
        return {
            "source": self.source,
            "description": self.description,
            "model": m.name,
            "embed_dim": m.embed_dim,
            "depth": g.depth,
            "heads": g.heads,
            "patch_size": list(g.patch_size),
            "grid_size": list(g.grid_size),
            "num_prefix_tokens": g.num_prefix_tokens,
            "img_size": self.cfg.data.img_size,
            "in_chans": self.cfg.data.in_chans,
            "params": sum(p.numel() for p in self.encoder.parameters()),
        }


def match_channels(images: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Gray images repeated to 3 channels, or colour images reduced to luminance (ITU-R 601), as the model needs."""
    have = images.shape[1]
    if have == in_chans:
        return images
    if have == 1 and in_chans == 3:
        return images.expand(-1, 3, -1, -1)
    if have == 3 and in_chans == 1:
        return luminance(images.float()).round().clamp(0, 255).to(images.dtype)
    raise ConfigError(f"cannot feed {have}-channel images to a model with {in_chans} input channels")


def geometry_of(encoder: nn.Module) -> ViTGeometry:
    blocks = getattr(encoder, "blocks", None)
    patch_embed = getattr(encoder, "patch_embed", None)
    if blocks is None or patch_embed is None:
        raise ConfigError(f"analysis needs a timm VisionTransformer; got {type(encoder).__name__}")
    return ViTGeometry(
        depth=len(blocks),
        heads=int(blocks[0].attn.num_heads),
        grid_size=tuple(int(v) for v in patch_embed.grid_size),
        patch_size=tuple(int(v) for v in patch_embed.patch_size),
        num_prefix_tokens=int(getattr(encoder, "num_prefix_tokens", 1)),
    )


def load_model(spec: str, base: Config, device: torch.device) -> AnalysedModel:
    """`[NAME=]SOURCE` -> a frozen encoder in eval mode on `device`."""
    source = resolve_source(source_of(spec), base)
    if source.arch.get("stage_depths"):
        raise ConfigError(
            f"--model {spec}: attention analysis reads ViT blocks; SwinV2 (window attention) is not supported"
        )
    cfg = adopt_source(base, source)
    torch.manual_seed(cfg.seed)  # `scratch` is the same random network every time
    encoder = frozen_encoder(cfg, source, device)
    return AnalysedModel(model_name(spec), source_of(spec), source.description, cfg, encoder, geometry_of(encoder))


def load_models(specs: list[str], base: Config, device: torch.device) -> list[AnalysedModel]:
    if not specs:
        raise ConfigError("analysis needs at least one --model")
    models = [load_model(spec, base, device) for spec in specs]
    labels = [m.label for m in models]
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        raise ConfigError(f"two --model sources share the name {duplicates}; name them as NAME=SOURCE")
    return models
