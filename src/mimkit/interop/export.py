"""`mimkit export`: encoder-only weights in timm's key layout, loadable strictly by `timm.create_model`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mimkit.api import load
from mimkit.data.transforms import timm_data_config
from mimkit.engine.atomic import atomic_write_text, save_safetensors
from mimkit.models.encoder import is_beit
from mimkit.models.presets import resolve_model_spec, timm_kwargs


def export_encoder(run_or_ckpt: str | Path, out: str | Path) -> dict[str, Any]:
    """Write OUT (safetensors) and OUT.json (the timm name and kwargs that rebuild the encoder)."""
    method = load(run_or_ckpt)
    cfg = method.config
    state = {k: v.contiguous() for k, v in method.encoder_state_dict().items()}
    out = Path(out)
    save_safetensors(state, out, metadata={"format": "pt", "source": "mimkit", "method": cfg.method.name})
    spec = resolve_model_spec(cfg.model, cfg.data.img_size)
    kwargs = timm_kwargs(cfg)
    if is_beit(method.encoder):  # timm's BEiT pools by default; keep the run's final norm where it is
        kwargs["global_pool"] = method.encoder.global_pool
    overlay = {"file": str(out), **timm_data_config(cfg), **DROPPED_SOURCE, "tag": f"mimkit_{cfg.method.name}"}
    info = {
        "timm_name": spec.timm_name,
        "timm_kwargs": kwargs,
        "pretrained_cfg_overlay": overlay,
        "norm_eps": cfg.model.norm_eps,
        "method": cfg.method.name,
        "file": str(out),
    }
    atomic_write_text(out.with_suffix(out.suffix + ".json"), json.dumps(info, indent=1))
    info["snippet"] = (
        f"timm.create_model('{spec.timm_name}', pretrained=True, pretrained_cfg_overlay={overlay!r}, "
        + ", ".join(f"{k}={v!r}" for k, v in info["timm_kwargs"].items())
        + ")"
    )
    return info


# what the timm name's own pretrained config says about weights that are not these: no URL or hub id to fall back
# on, no 3-channel first conv to adapt (the file holds the run's own channels), no ImageNet classifier
DROPPED_SOURCE = {"url": "", "hf_hub_id": "", "first_conv": None, "classifier": None, "num_classes": 0}
