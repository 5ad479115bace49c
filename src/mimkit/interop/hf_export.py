"""`mimkit export --format hf`: an MAE run as a `ViTMAEForPreTraining` directory (`save_pretrained` layout) that
transformers loads, the inverse of `mimkit import` for HF directories. The key layout comes from transformers' own
model, so the file matches whichever transformers version writes it; the names map through the importer's table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mimkit.errors import UserError
from mimkit.interop.imports import mimkit_key_of


class ExportError(UserError, ValueError):
    """A run that the HF layout cannot hold (the message says why)."""


def hf_config_of(method: torch.nn.Module) -> dict[str, Any]:
    """ViTMAEConfig keyword arguments describing a mimkit MAE run."""
    from mimkit.methods.mae.model import MAE

    cfg, encoder = method.config, method.encoder
    if not isinstance(method, MAE):
        raise ExportError(f"--format hf writes ViTMAEForPreTraining: this run is {type(method).__name__}, not MAE")
    if not hasattr(encoder, "blocks") or getattr(encoder, "pos_embed", None) is None:
        raise ExportError("--format hf needs a plain ViT encoder (model.family=vit)")
    dim, depth = encoder.embed_dim, len(encoder.blocks)
    mlp_hidden = encoder.blocks[0].mlp.fc1.out_features
    patch = encoder.patch_embed.patch_size[0]
    return dict(
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=encoder.blocks[0].attn.num_heads,
        intermediate_size=mlp_hidden,
        decoder_hidden_size=cfg.model.decoder_dim,
        decoder_num_hidden_layers=cfg.model.decoder_depth,
        decoder_num_attention_heads=cfg.model.decoder_heads,
        decoder_intermediate_size=int(round(mlp_hidden / dim * cfg.model.decoder_dim)),
        image_size=cfg.data.img_size,
        patch_size=patch,
        num_channels=cfg.data.in_chans,
        mask_ratio=cfg.method.mask_ratio,
        norm_pix_loss=bool(cfg.method.norm_pix),
        layer_norm_eps=cfg.model.norm_eps,
        qkv_bias=True,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def hf_state_from_mimkit(ours: dict[str, torch.Tensor], hf_keys: list[str]) -> dict[str, torch.Tensor]:
    """Each HF key's tensor from mimkit's state (timm's fused qkv split into query, key and value)."""
    out = {}
    for key in hf_keys:
        found = mimkit_key_of(key)
        if found is None:
            raise ExportError(f"no mimkit weight for the HF key '{key}' (a transformers version mimkit does not know)")
        source, part = found
        out[key] = ours[source] if part is None else ours[source].chunk(3, dim=0)["qkv".index(part)]
    return out


def export_hf(method: Any, out: str | Path) -> dict[str, Any]:
    """Write OUT as a ViTMAEForPreTraining directory; returns what was written."""
    try:
        import transformers
    except ImportError:
        raise ExportError("--format hf needs transformers: `pip install transformers`") from None
    config = transformers.ViTMAEConfig(**hf_config_of(method))
    model = transformers.ViTMAEForPreTraining(config)
    ours = {k: v.detach().cpu() for k, v in method.state_dict().items()}
    expected = model.state_dict()
    state = hf_state_from_mimkit(ours, list(expected))
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise ExportError(f"'{key}': mimkit's {tuple(tensor.shape)} vs HF's {tuple(expected[key].shape)}")
    model.load_state_dict(state, strict=True)
    out = Path(out)
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-file "Writing model shards" bar is noise in a command's output
    try:
        model.save_pretrained(out)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return {"format": "hf", "directory": str(out), "transformers": transformers.__version__, "keys": len(state)}
