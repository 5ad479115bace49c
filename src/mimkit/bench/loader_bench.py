"""`mimkit bench loader`: img/s of mimkit's input pipeline alone (the TrainStream the Engine trains from: decoded
uint8 images, batched random-resized-crop, flip and normalise on the run's device), so one can see whether the
input keeps up with a training step measured by `mimkit bench pretrain`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mimkit.bench.suite import device_name
from mimkit.bench.timing import time_steps
from mimkit.config import Config
from mimkit.engine.atomic import atomic_write_text
from mimkit.engine.distributed import DistEnv, pick_device


def run_loader_bench(cfg: Config, steps: int = 20, warmup: int = 3, out: str | Path | None = None) -> dict[str, Any]:
    """Time `steps` batches (after `warmup` untimed ones) of the run's train stream, device synchronised."""
    from mimkit.training import build_stream, prepare_config

    device = pick_device(cfg.device)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=device)
    cfg, data, _ = prepare_config(cfg, env, lambda *_: None)
    stream = build_stream(cfg, data, env)
    batch = cfg.train.batch_size // cfg.train.accum_steps
    last: dict[str, Any] = {"step": 0}

    def next_batch() -> None:
        last["images"] = stream.get(last["step"], 0)["images"]
        last["step"] += 1

    try:
        seconds = time_steps(next_batch, steps, warmup, device)
    finally:
        stream.close()  # its worker processes and decode thread
    images = last["images"]
    results = {
        "config": {
            "data": cfg.data.name,
            "decode": cfg.data.decode,
            "num_workers": cfg.data.num_workers,
            "decode_size": cfg.data.decode_size,
            "img_size": cfg.data.img_size,
            "batch": batch,
            "train_images": len(data.train),
            "method": cfg.method.name,
        },
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "img_per_s": steps * batch / seconds,
        "batch_ms": 1000 * seconds / steps,
        "batch_shape": list(images.shape),
    }
    if out:
        results["written_to"] = str(Path(out) / "results.json")  # --out is a directory, as for every command
        atomic_write_text(results["written_to"], json.dumps(results, indent=1))
    return results


def loader_summary(results: dict[str, Any]) -> list[str]:
    """What `mimkit bench loader` prints."""
    c = results["config"]
    return [
        f"input pipeline ({c['data']}, decode={c['decode']}, {c['num_workers']} workers, {c['img_size']} px, "
        f"batch {c['batch']}) on {results['device']}: {results['img_per_s']:,.0f} img/s, "
        f"{results['batch_ms']:.1f} ms per batch ({results['steps']} timed batches)"
    ]
