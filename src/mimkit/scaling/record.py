"""What one sweep run measured, read back from its run directory: size, training compute, curves, final held-out
loss and fine-tune top-1; and the sweep's results.csv (one row per run) with curves.json beside it."""

from __future__ import annotations

import csv
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import yaml

from mimkit.bench.flops import count_flops
from mimkit.config import Config, config_from_dict
from mimkit.engine.atomic import atomic_write_text
from mimkit.engine.metrics import read_metrics
from mimkit.scaling.table import SWEEP_COLUMNS as COLUMNS


def training_flops_per_image(cfg: Config) -> float:
    """FLOPs of one training step (forward + backward) per image, counted by torch.utils.flop_counter on a batch
    of two; the optimizer step is left out (it scales with parameters, not images)."""
    tree = cfg.to_dict()  # only what changes the FLOPs, so runs that differ in data, length or seed share a count
    key = {
        "model": tree["model"],
        "method": tree["method"],
        "distill": tree["distill"],
        "data": {k: tree["data"][k] for k in ("img_size", "in_chans", "name")},
    }
    return _flops_cached(yaml.safe_dump(key, sort_keys=True))


@lru_cache(maxsize=32)
def _flops_cached(config_text: str) -> float:
    from mimkit.data.keyed_random import sample_keys
    from mimkit.methods import build_method, method_spec

    cfg = config_from_dict(yaml.safe_load(config_text))  # defaults for the rest (seed, train) do not change FLOPs
    torch.manual_seed(0)
    method = build_method(cfg).train()
    d = cfg.data
    images = torch.randn(2, d.in_chans, d.img_size, d.img_size)
    batch = {"images": images, "keys": sample_keys(torch.arange(2), 0), "labels": torch.zeros(2, dtype=torch.long)}
    if method_spec(cfg).views == 2:  # a contrastive method reads a second view
        batch["images2"] = images.flip(-1)
    with method.plain_path():  # the model's FLOPs, as the papers count compute, not the ones mimkit skips
        return count_flops(lambda: method(batch)["loss"].backward()) / 2


def encoder_params(cfg: Config) -> int:
    from mimkit.methods import build_method

    with torch.device("meta"):
        method = build_method(cfg)
    return sum(p.numel() for p in method.encoder.parameters())


def _curve(records: list[dict[str, Any]], event: str, split: str) -> list[list[float]]:
    return [
        [r["step"], r["loss"]]
        for r in records
        if r.get("event") == event and r.get("split") == split and r.get("loss") is not None
    ]


def run_record(run_dir: Path, axes: dict[str, str], finetune_dir: Path | None = None) -> dict[str, Any]:
    """The row for results.csv plus the run's curves (train loss, fixed-mask held-out and train-subset loss)."""
    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    results = json.loads((run_dir / "results.json").read_text())
    records = read_metrics(run_dir / "metrics.jsonl")
    t = cfg.train
    images_seen = results["step"] * t.batch_size
    flops = training_flops_per_image(cfg)
    row: dict[str, Any] = {
        "run": run_dir.name,
        "model": cfg.model.name,
        "params": encoder_params(cfg),
        "data": cfg.data.fraction,
        "data_images": results["train_images"],
        "iterations": results["step"],
        "batch_size": t.batch_size,
        "images_seen": images_seen,
        "epochs": images_seen / max(1, results["train_images"]),
        "seed": cfg.seed,
        "flops_per_image": flops,
        "compute": flops * images_seen,
        "heldout_loss": results.get("final_heldout_loss"),
        "best_heldout_loss": results.get("best_heldout_loss"),
        "train_loss": results.get("final_train_fixed_loss"),
        "finetune_top1": None,
        "pretrain_seconds": results.get("seconds"),
        "run_dir": str(run_dir),
    }
    row.update(axes)  # the sweep's labels win (a named model bundle, the data fraction as written)
    if finetune_dir is not None and (finetune_dir / "results.json").is_file():
        ft = json.loads((finetune_dir / "results.json").read_text())
        row["finetune_top1"] = ft.get("final_heldout_top1")
    return {"row": row, "curves": curves_of(records, cfg, {**row, "iterations": results["step"]})}


def curves_of(records: list[dict[str, Any]], cfg: Config, row: dict[str, Any]) -> dict[str, Any]:
    """A run's loss curves (train, fixed-mask held-out and train-subset) with the labels curves.json groups by."""
    return {
        "heldout": _curve(records, "eval", "heldout"),
        "train_fixed": _curve(records, "eval", "train_fixed"),
        "train": _curve(records, "train", "train"),
        "batch_size": cfg.train.batch_size,
        "model": row["model"],
        "data": row["data"],
        "data_images": row["data_images"],
        "iterations": row["iterations"],
    }


def write_results(records: list[dict[str, Any]], out: Path) -> Path:
    """DIR/results.csv (one row per finished run) and DIR/curves.json (run -> curves)."""
    rows = [r["row"] for r in records]
    extra = [k for row in rows for k in row if k not in COLUMNS]
    columns = COLUMNS + list(dict.fromkeys(extra))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.csv", buffer.getvalue())
    curves = {r["row"]["run"]: r["curves"] for r in records if r.get("curves")}
    if curves:
        atomic_write_text(out / "curves.json", json.dumps(curves))
    return out / "results.csv"
