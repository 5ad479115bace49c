"""Python API: `mimkit.load(RUN_DIR_or_checkpoint)` returns the trained Method module (eval mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from mimkit.config import Config, config_from_dict, resolved
from mimkit.engine import checkpoint as ckpt
from mimkit.methods import Method, build_method


def load_config_of(path: str | Path) -> tuple[Config, Path]:
    """The resolved config a checkpoint was trained with, and the checkpoint folder."""
    ckpt_dir = ckpt.find_checkpoint(path)
    meta = ckpt.load_meta(ckpt_dir) if (ckpt_dir / ckpt.META_FILE).is_file() else {}
    tree = meta.get("config")
    if tree is None:
        for candidate in (Path(path) / "config.yaml", ckpt_dir.parent.parent / "config.yaml"):
            if candidate.is_file():
                tree = yaml.safe_load(candidate.read_text())
                break
    if tree is None:
        raise ckpt.CheckpointError(f"'{path}': no config found (meta.json or config.yaml)")
    return resolved(config_from_dict(tree)), ckpt_dir


def load(path: str | Path, device: str | torch.device = "cpu") -> Method:
    """Rebuild the run's model from its saved config and load its weights (strictly)."""
    cfg, ckpt_dir = load_config_of(path)
    method = build_method(cfg)
    try:
        method.load_state_dict(ckpt.load_weights(ckpt_dir), strict=True)
    except RuntimeError as err:  # a tensor of the wrong shape, or keys of another model
        raise ckpt.CheckpointError(
            f"checkpoint '{ckpt_dir}' does not fit the model its own config describes "
            f"({str(err).strip().splitlines()[-1][:300]}); the weights were changed after the run saved them"
        ) from None
    method.config = cfg
    return method.to(device).eval()


def transforms_for(model_or_run: Any) -> Any:
    """The preprocessing a model expects, as timm's eval transform for PIL images (resize the whole image to the
    network size, to tensor, normalise): from a mimkit Method or a run directory / checkpoint (the data config the
    timm export records), or from a timm model (its own pretrained config, e.g. one loaded from a mimkit export).
    Give PIL images in the run's channel mode ('L' for one channel)."""
    from timm.data import create_transform, resolve_data_config

    from mimkit.data.transforms import timm_data_config

    if isinstance(model_or_run, torch.nn.Module) and not hasattr(model_or_run, "config"):
        data = resolve_data_config({}, model=model_or_run)
    else:
        cfg = model_or_run.config if hasattr(model_or_run, "config") else load_config_of(model_or_run)[0]
        data = timm_data_config(cfg)
    return create_transform(
        input_size=tuple(data["input_size"]),
        interpolation=data["interpolation"],
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        crop_pct=data["crop_pct"],
        crop_mode=data.get("crop_mode", "center"),
    )
