"""`mimkit bench pretrain`: img/s and peak memory of full training steps (forward, backward, AdamW) on synthetic
data already on the device; `--compare hf` times HuggingFace ViTMAEForPreTraining of the same shape in the same
process, so the ratio is measured on one machine in one run."""
from __future__ import annotations

import contextlib
import json
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mimkit.config import Config, resolved
from mimkit.engine.atomic import atomic_write_text
from mimkit.engine.distributed import pick_device
from mimkit.engine.trainer import resolve_precision
from mimkit.methods import build_method


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def time_steps(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for `steps` calls after `warmup` untimed ones (device synchronised)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _train_step_fn(model: torch.nn.Module, forward: Callable[[], torch.Tensor], device: torch.device,
                   amp: torch.dtype | None) -> Callable[[], None]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            fused=True if device.type == "cuda" else None)

    def step() -> None:
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            loss = forward()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hf_mae_like(cfg: Config) -> torch.nn.Module:
    """HF ViTMAEForPreTraining with the same shape as the mimkit MAE of `cfg`."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    m, d = cfg.model, cfg.data
    hf_cfg = ViTMAEConfig(
        hidden_size=m.embed_dim, num_hidden_layers=m.depth, num_attention_heads=m.num_heads,
        intermediate_size=int(m.embed_dim * m.mlp_ratio), decoder_hidden_size=m.decoder_dim,
        decoder_num_hidden_layers=m.decoder_depth, decoder_num_attention_heads=m.decoder_heads,
        decoder_intermediate_size=int(m.decoder_dim * m.mlp_ratio), image_size=d.img_size,
        patch_size=m.patch_size, num_channels=d.in_chans, mask_ratio=cfg.method.mask_ratio,
        norm_pix_loss=cfg.method.norm_pix, layer_norm_eps=m.norm_eps, qkv_bias=True,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    try:
        return ViTMAEForPreTraining._from_config(hf_cfg, attn_implementation="sdpa")
    except (TypeError, ValueError):
        return ViTMAEForPreTraining(hf_cfg)


def run_pretrain_bench(cfg: Config, steps: int = 20, warmup: int = 3, compare: str | None = None,
                       out: str | Path | None = "bench-pretrain.json") -> dict[str, Any]:
    cfg = resolved(cfg)
    device = pick_device(cfg.device)
    amp = resolve_precision(cfg.train.precision, device)
    batch = cfg.train.batch_size // cfg.train.accum_steps
    torch.manual_seed(cfg.seed)
    images = torch.randn(batch, cfg.data.in_chans, cfg.data.img_size, cfg.data.img_size, device=device)
    keys = torch.arange(batch, device=device)
    results: dict[str, Any] = {
        "config": {"method": cfg.method.name, "model": cfg.model.name, "img_size": cfg.data.img_size,
                   "patch_size": cfg.model.patch_size, "batch": batch, "precision": str(amp or "fp32")},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
    }
    method = build_method(cfg).to(device).train()
    counter = {"i": 0}

    def mimkit_forward() -> torch.Tensor:
        counter["i"] += 1
        return method({"images": images, "keys": keys + counter["i"] * batch})["loss"]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = _train_step_fn(method, mimkit_forward, device, amp)
    seconds = time_steps(step, steps, warmup, device)
    results["mimkit"] = {"img_per_s": steps * batch / seconds, "step_ms": 1000 * seconds / steps,
                         "peak_memory_mb": _peak_memory_mb(device)}
    step = method = None  # release the model and optimizer state before the comparison model is built
    if compare == "hf":
        if cfg.method.name != "mae":
            raise ValueError("--compare hf times ViTMAEForPreTraining: use an MAE config")
        hf = hf_mae_like(cfg).to(device).train()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        seconds = time_steps(_train_step_fn(hf, lambda: hf(pixel_values=images).loss, device, amp), steps, warmup,
                             device)
        results["hf"] = {"img_per_s": steps * batch / seconds, "step_ms": 1000 * seconds / steps,
                         "peak_memory_mb": _peak_memory_mb(device)}
        results["ratio_mimkit_over_hf"] = results["mimkit"]["img_per_s"] / results["hf"]["img_per_s"]
    if out:
        atomic_write_text(out, json.dumps(results, indent=1))
        results["written_to"] = str(out)
    return results
