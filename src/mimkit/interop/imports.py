"""`mimkit import`: HuggingFace `ViTMAEForPreTraining` directories and official MAE `.pth` checkpoints become mimkit
run directories (config.yaml + checkpoints/last with weights only), which `mimkit.load` and `pretrain` accept."""

from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mimkit.config import Config, config_from_dict, resolved, save_config
from mimkit.engine import checkpoint as ckpt
from mimkit.errors import UserError
from mimkit.methods import build_method

# HF layer names, in transformers 4 files, transformers 5 files and transformers 5 modules.
_HF_ENCODER_LAYER = re.compile(r"^vit\.(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_HF_DECODER_LAYER = re.compile(r"^decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\.(.+)$")
_HF_LAYER_PARTS = [
    (r"^attention\.(?:attention\.query|q_proj)\.", "q."),
    (r"^attention\.(?:attention\.key|k_proj)\.", "k."),
    (r"^attention\.(?:attention\.value|v_proj)\.", "v."),
    (r"^attention\.(?:output\.dense|o_proj)\.", "attn.proj."),
    (r"^layernorm_before\.", "norm1."),
    (r"^layernorm_after\.", "norm2."),
    (r"^(?:intermediate\.dense|mlp\.fc1)\.", "mlp.fc1."),
    (r"^(?:output\.dense|mlp\.fc2)\.", "mlp.fc2."),
]
_HF_FIXED = {
    "vit.embeddings.cls_token": "encoder.cls_token",
    "vit.embeddings.position_embeddings": "encoder.pos_embed",
    "vit.embeddings.patch_embeddings.projection.weight": "encoder.patch_embed.proj.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "encoder.patch_embed.proj.bias",
    "vit.layernorm.weight": "encoder.norm.weight",
    "vit.layernorm.bias": "encoder.norm.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
}


class ImportError_(UserError, ValueError):
    """An input that is not a supported checkpoint (message says what was expected)."""


def mimkit_key_of(hf_key: str) -> tuple[str, str | None] | None:
    """Where an HF ViTMAE weight lives in mimkit's MAE: (key, None), or (the fused qkv key, 'q' | 'k' | 'v') for a
    query, key or value projection; None for a key this table does not know. The import and `export --format hf`
    both read it."""
    if hf_key in _HF_FIXED:
        return _HF_FIXED[hf_key], None
    if hf_key.startswith("decoder.") and hf_key.split(".")[1] in ("decoder_embed", "decoder_norm", "decoder_pred"):
        return hf_key[len("decoder.") :], None
    for pattern, prefix in ((_HF_ENCODER_LAYER, "encoder.blocks"), (_HF_DECODER_LAYER, "decoder_blocks")):
        match = pattern.match(hf_key)
        if match:
            index, rest = match.groups()
            for part, target in _HF_LAYER_PARTS:
                if re.match(part, rest):
                    suffix = re.sub(part, target, rest)
                    if target in ("q.", "k.", "v."):
                        return f"{prefix}.{index}.attn.qkv.{suffix[2:]}", target[0]
                    return f"{prefix}.{index}.{suffix}", None
            return None
    return None


def convert_hf_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ViTMAEForPreTraining keys -> mimkit MAE keys (separate q, k, v fused into timm's qkv)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        found = mimkit_key_of(key)
        if found is None:
            if key.endswith("num_batches_tracked"):
                continue
            raise ImportError_(f"unexpected HF ViTMAE key '{key}'")
        target, part = found
        if part is None:
            out[target] = value
        else:
            qkv.setdefault(target, {})[part] = value
    for name, parts in qkv.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _vit_overrides(embed_dim: int, depth: int, heads: int, mlp_ratio: float, patch: int) -> dict[str, Any]:
    return dict(
        name="vit_base_patch16_224",
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
    )


def _imported_config(
    model: dict[str, Any], img_size: int, in_chans: int, mask_ratio: float, norm_pix: bool, norm_eps: float
) -> Config:
    tree = {
        "data": {"name": "synthetic", "img_size": img_size, "in_chans": in_chans},
        "model": {**model, "norm_eps": norm_eps},
        "method": {"name": "mae", "mask_ratio": mask_ratio, "norm_pix": norm_pix},
    }
    return resolved(config_from_dict(tree))


def hf_config_to_mimkit(hf_cfg: dict[str, Any]) -> Config:
    if hf_cfg.get("model_type") not in (None, "vit_mae"):
        raise ImportError_(f"config.json has model_type '{hf_cfg.get('model_type')}', expected 'vit_mae'")
    if hf_cfg.get("hidden_act", "gelu") != "gelu" or not hf_cfg.get("qkv_bias", True):
        raise ImportError_("only ViTMAE with hidden_act='gelu' and qkv_bias=True maps onto timm blocks")
    hidden = hf_cfg.get("hidden_size", 768)
    dec = hf_cfg.get("decoder_hidden_size", 512)
    model = _vit_overrides(
        hidden,
        hf_cfg.get("num_hidden_layers", 12),
        hf_cfg.get("num_attention_heads", 12),
        hf_cfg.get("intermediate_size", 3072) / hidden,
        hf_cfg.get("patch_size", 16),
    )
    dec_ratio = hf_cfg.get("decoder_intermediate_size", 2048) / dec
    if abs(dec_ratio - model["mlp_ratio"]) > 1e-9:
        raise ImportError_(
            f"decoder MLP ratio {dec_ratio} differs from the encoder's {model['mlp_ratio']}; mimkit "
            "uses one mlp_ratio for both"
        )
    model.update(
        decoder_dim=dec,
        decoder_depth=hf_cfg.get("decoder_num_hidden_layers", 8),
        decoder_heads=hf_cfg.get("decoder_num_attention_heads", 16),
    )
    size = hf_cfg.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return _imported_config(
        model,
        size,
        hf_cfg.get("num_channels", 3),
        hf_cfg.get("mask_ratio", 0.75),
        hf_cfg.get("norm_pix_loss", False),
        hf_cfg.get("layer_norm_eps", 1e-12),
    )


def read_hf_directory(directory: Path) -> tuple[Config, dict[str, torch.Tensor]]:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ImportError_(
            f"'{directory}' has no config.json (expected a ViTMAEForPreTraining save_pretrained directory)"
        )
    cfg = hf_config_to_mimkit(json.loads(config_path.read_text()))
    if (directory / "model.safetensors").is_file():
        path, read = directory / "model.safetensors", lambda p: load_file(str(p))
    elif (directory / "pytorch_model.bin").is_file():
        path, read = directory / "pytorch_model.bin", lambda p: torch.load(p, map_location="cpu", weights_only=True)
    else:
        raise ImportError_(f"'{directory}' has neither model.safetensors nor pytorch_model.bin")
    try:
        state = read(path)
    except Exception as err:  # noqa: BLE001 - truncated, corrupt, or a pickle that needs more than tensors
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ImportError_(
            f"'{path}' is not a readable weights file ({type(err).__name__}: {reason}); download it again"
        ) from None
    if not isinstance(state, dict):
        raise ImportError_(f"'{path}' holds a {type(state).__name__}, not a state dict")
    return cfg, convert_hf_state_dict(state)


# Official MAE: head counts are not in the state dict. The official models (models_mae.py) fix them by size, and
# every one has a 16-head decoder; the size is named in args.model (mae_vit_large_patch16) or, for the released
# files, which carry no args, in the file name (mae_pretrain_vit_large.pth, mae_visualize_vit_large.pth).
_MAE_HEADS = {"base": 12, "large": 16, "huge": 16}
_MAE_DECODER_HEADS = 16
_MAE_SIZE = re.compile(r"(?:^|_)vit_(base|large|huge)(?:_|$|\.)")
_MAE_DECODER_KEYS = ("mask_token", "decoder_")
# The settings `mimkit import --set` may give an official checkpoint (what its state dict does not say).
MAE_IMPORT_KEYS = ("model.num_heads", "model.decoder_heads", "method.norm_pix", "method.mask_ratio")


def _official_size(args: dict[str, Any], path: Path) -> str | None:
    """'base' / 'large' / 'huge' from args.model, else from a released file's name; None when neither says."""
    for text in (str(args.get("model", "")), path.name):
        match = _MAE_SIZE.search(text)
        if match:
            return match.group(1)
    return None


def _import_settings(overrides: list[str] | None) -> dict[str, Any]:
    from mimkit.config import parse_override

    settings = {}
    for text in overrides or []:
        key, value = parse_override(text)
        if key not in MAE_IMPORT_KEYS:
            raise ImportError_(f"--set {key}: an official MAE import takes only {', '.join(MAE_IMPORT_KEYS)}")
        settings[key] = value
    return settings


def read_mae_pth(path: Path, overrides: list[str] | None = None) -> tuple[Config, dict[str, torch.Tensor]]:
    """An official MAE checkpoint: {'model': state_dict, 'args': argparse.Namespace, ...}. The Namespace is
    allow-listed for `weights_only=True` loading instead of unpickling arbitrary objects. Head counts come from
    `--set`, else the official size (args.model or the released file's name); never guessed. norm_pix comes from
    `--set`, else args.norm_pix_loss, else False: the official default, and what the mae_visualize_* files were
    trained with (a warning says so unless the file is one of those)."""
    settings = _import_settings(overrides)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ImportError_(f"'{path}' is not a loadable MAE checkpoint ({type(err).__name__}: {err})") from None
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or "patch_embed.proj.weight" not in state:
        raise ImportError_(f"'{path}' has no MAE state dict (expected key 'model' with 'patch_embed.proj.weight')")
    args = vars(blob.get("args")) if isinstance(blob.get("args"), argparse.Namespace) else {}
    size = _official_size(args, path)
    embed_dim = state["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    patch = state["patch_embed.proj.weight"].shape[-1]
    in_chans = state["patch_embed.proj.weight"].shape[1]
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    heads = settings.get("model.num_heads", _MAE_HEADS.get(size))
    has_decoder = "decoder_embed.weight" in state
    dec_heads = settings.get("model.decoder_heads", _MAE_DECODER_HEADS if size else None)
    missing = [k for k, v in (("model.num_heads", heads), ("model.decoder_heads", dec_heads)) if v is None]
    if not has_decoder and "model.decoder_heads" in missing:
        missing.remove("model.decoder_heads")
        dec_heads = _MAE_DECODER_HEADS  # the fresh decoder gets the official head count
    if missing:
        raise ImportError_(
            f"'{path}': the state dict does not say how many attention heads the model has, and neither args.model "
            f"({args.get('model', 'absent')!r}) nor the file name names an official size (base, large, huge); "
            f"give them: mimkit import {path} --out DIR " + " ".join(f"--set {k}=N" for k in missing)
        )
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    model = _vit_overrides(embed_dim, depth, heads, mlp_ratio, patch)
    if has_decoder:
        dec = state["decoder_embed.weight"].shape[0]
        dec_depth = len({k.split(".")[1] for k in state if k.startswith("decoder_blocks.")})
        model.update(decoder_dim=dec, decoder_depth=dec_depth, decoder_heads=dec_heads)
    else:
        model.update(decoder_heads=dec_heads)
    if "method.norm_pix" in settings:
        norm_pix = bool(settings["method.norm_pix"])
    elif "norm_pix_loss" in args:
        norm_pix = bool(args["norm_pix_loss"])
    else:
        norm_pix = False
        if "visualize" not in path.name:
            warnings.warn(
                f"'{path}' does not record norm_pix_loss; importing with the official default, raw-pixel targets "
                "(method.norm_pix=false). If it was trained on normalised pixels, import it with --set "
                "method.norm_pix=true",
                stacklevel=2,
            )
    mask_ratio = float(settings.get("method.mask_ratio", args.get("mask_ratio", 0.75)))
    cfg = _imported_config(model, grid * patch, in_chans, mask_ratio, norm_pix, 1e-6)
    converted = {(k if k.startswith(_MAE_DECODER_KEYS) else f"encoder.{k}"): v for k, v in state.items()}
    if not has_decoder:
        warnings.warn(f"'{path}' holds the encoder only; the MAE decoder is freshly initialised", stacklevel=2)
        fresh = build_method(cfg).state_dict()
        converted.update({k: v for k, v in fresh.items() if k.startswith(_MAE_DECODER_KEYS)})
    return cfg, converted


def import_checkpoint(
    source: str | Path, out: str | Path, fmt: str = "auto", overrides: list[str] | None = None
) -> dict[str, Any]:
    """Convert SOURCE into the run directory OUT; checks the weights fit the rebuilt model strictly. `overrides`
    (`key=value`, official .pth only) say what the state dict cannot: head counts, norm_pix, mask ratio."""
    source, out = Path(source), Path(out)
    if fmt == "auto":
        fmt = "hf" if source.is_dir() else "mae-pth"
    if not source.exists():
        raise ImportError_(f"'{source}' does not exist")
    if fmt == "hf" and overrides:
        raise ImportError_("--set is for official MAE .pth files; a HF directory's config.json says everything")
    cfg, state = read_hf_directory(source) if fmt == "hf" else read_mae_pth(source, overrides)
    method = build_method(cfg)
    try:
        method.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ImportError_(f"converted weights do not fit the rebuilt model: {str(err).splitlines()[0]}") from None
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    meta = {"method": "mae", "imported_from": str(source), "format": fmt, "config": cfg.to_dict()}
    path = ckpt.save_checkpoint(out / "checkpoints", 0, method.state_dict(), None, meta)
    return {
        "run_dir": str(out),
        "checkpoint": str(path),
        "format": fmt,
        "encoder_params": sum(p.numel() for p in method.encoder.parameters()),
    }
