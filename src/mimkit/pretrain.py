"""`mimkit pretrain`: build data, method and Engine from a config, train, then draw curves and reconstructions."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from mimkit.config import Config, ConfigError, load_config, resolved, save_config
from mimkit.data.datasets import DataBundle, build_data
from mimkit.data.loader import TrainStream
from mimkit.data.transforms import BatchAugment
from mimkit.engine.atomic import atomic_write_text
from mimkit.engine.distributed import DistEnv, barrier, init_distributed
from mimkit.engine.trainer import Engine
from mimkit.heldout import FixedMaskEvaluator
from mimkit.methods import build_method


def versions() -> dict[str, str]:
    import timm

    return {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}


def build_stream(cfg: Config, data: DataBundle, env: DistEnv) -> TrainStream:
    d, t = cfg.data, cfg.train
    if t.batch_size % (t.accum_steps * env.world_size):
        raise ValueError(f"train.batch_size {t.batch_size} must be divisible by train.accum_steps ({t.accum_steps})"
                         f" x processes ({env.world_size})")
    augment = BatchAugment(d.img_size, tuple(d.crop_scale), tuple(d.crop_ratio), d.hflip, d.mean, d.std, cfg.seed)
    micro = t.batch_size // (t.accum_steps * env.world_size)
    return TrainStream(data.train, augment, micro, t.accum_steps, env.rank, env.world_size, cfg.seed, env.device)


def load_data_once(cfg: Config, env: DistEnv, log=print) -> DataBundle:
    """Rank 0 first (it may decode a folder into the cache), then the others read the cache."""
    data = build_data(cfg, log if env.is_main else (lambda *_: None)) if env.is_main else None
    barrier(env)
    return data if data is not None else build_data(cfg, lambda *_: None)


def check_same_model(cfg: Config, run_dir: Path) -> None:
    """Resuming into a run directory trained with another model or method would overwrite its config.yaml and then
    fail on the weights: refuse up front and leave the directory untouched."""
    old_path = run_dir / "config.yaml"
    if not (old_path.is_file() and (run_dir / "checkpoints").is_dir()):
        return
    old = resolved(load_config(str(old_path)))
    for section in ("model", "method"):
        if getattr(old, section) != getattr(cfg, section):
            raise ConfigError(f"'{run_dir}' holds a run with a different {section} config ({getattr(old, section)}); "
                              "use a new --out directory, or pass --config with that run directory to resume it")
    for key in ("img_size", "in_chans"):
        if getattr(old.data, key) != getattr(cfg.data, key):
            raise ConfigError(f"'{run_dir}' was trained with data.{key}={getattr(old.data, key)}, not "
                              f"{getattr(cfg.data, key)}; use a new --out directory")


def pretrain(cfg: Config, run_dir: str | Path, require_checkpoint: bool = False) -> dict[str, Any]:
    """Train (or resume) a MIM run in `run_dir`; returns the final numbers also written to results.json."""
    run_dir = Path(run_dir)
    cfg = resolved(cfg)
    env = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed)
    log = print if env.is_main else (lambda *_: None)
    if require_checkpoint and not (run_dir / "checkpoints").is_dir():
        raise FileNotFoundError(f"--resume: '{run_dir}' has no checkpoints/ to resume from")
    if env.is_main:
        check_same_model(cfg, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    data = load_data_once(cfg, env, log)
    log(f"[data] {cfg.data.name}: {data.describe()}")
    method = build_method(cfg)
    n_params = sum(p.numel() for p in method.encoder.parameters())
    log(f"[model] {cfg.method.name} on {cfg.model.name}: encoder {n_params / 1e6:.2f}M params, "
        f"{sum(p.numel() for p in method.parameters()) / 1e6:.2f}M total; device {env.device}, "
        f"{env.world_size} process(es)")
    stream = build_stream(cfg, data, env)
    meta = {"method": cfg.method.name, "model": cfg.model.name, "encoder_params": n_params,
            "versions": versions(), "world_size": env.world_size}
    engine = Engine(cfg, run_dir, method, env, stream, {}, meta)
    engine.evaluators = {  # evaluation runs under the engine's precision
        "heldout": FixedMaskEvaluator(data.heldout, cfg.train.eval_samples, cfg, env, engine.autocast),
        "train_fixed": FixedMaskEvaluator(data.train, cfg.train.eval_samples, cfg, env, engine.autocast),
    }
    t0 = time.time()
    fit = engine.fit()
    results = {"step": fit.step, "best_heldout_loss": fit.best_heldout,
               "final_heldout_loss": fit.final.get("heldout"), "final_train_fixed_loss": fit.final.get("train_fixed"),
               "train_images": len(data.train), "heldout_images": len(data.heldout),
               "images_per_epoch": stream.images_per_epoch, "epochs": fit.step * cfg.train.batch_size
               / max(1, len(data.train)), "skipped_images": len(data.skipped), "seconds": time.time() - t0}
    if env.is_main:
        from mimkit.viz.curves import plot_loss_curves

        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
        results["loss_curve"] = str(plot_loss_curves(run_dir))
        if cfg.train.reconstruct:
            from mimkit.viz.reconstructions import reconstruction_figure

            results["reconstructions"] = str(reconstruction_figure(
                method, data.train, data.heldout, cfg, run_dir / "figures" / "reconstructions.png",
                device=env.device))
    barrier(env)
    return results
