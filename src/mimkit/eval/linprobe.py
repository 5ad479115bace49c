"""`mimkit linprobe`: MAE's linear-probe protocol on frozen features. The head is BatchNorm without affine
parameters + a linear layer, trained with LARS (or SGD) under warmup + cosine. Features are cached, so 90 epochs
cost one forward pass of the encoder over the data, and a learning-rate search (probe.lr_grid) costs seconds."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn

from mimkit.config import Config, ConfigError, save_config
from mimkit.engine.atomic import atomic_write_text, save_safetensors
from mimkit.engine.metrics import MetricsLogger
from mimkit.engine.schedule import warmup_cosine_factor


def probe_head(dim: int, num_classes: int) -> nn.Module:
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


@torch.no_grad()
def head_accuracy(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    from mimkit.eval.accuracy import topk_correct

    head.eval()
    logits = head(feats)
    top1, top5 = topk_correct(logits, labels)
    n = max(len(labels), 1)
    return {"loss": float(F.cross_entropy(logits, labels)), "top1": 100 * top1 / n, "top5": 100 * top5 / n}


def train_head(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    held_x: torch.Tensor,
    held_y: torch.Tensor,
    num_classes: int,
    cfg: Config,
    logger: MetricsLogger | None = None,
) -> tuple[nn.Module, list]:
    p = cfg.probe
    torch.manual_seed(cfg.seed)
    head = probe_head(train_x.shape[1], num_classes)
    lr = p.base_lr * p.batch_size / 256
    # MAE's LARS adapts every weight matrix, decayed or not (timm's Lars: always_adapt), and leaves biases as plain
    # momentum SGD without decay. timm's trust ratio divides by ||g|| + wd ||w|| where MAE's divides by
    # ||g + wd w||: the same at MAE's probe weight decay, 0 (docs/fidelity.md)
    params = [
        {"params": [head[1].weight], "weight_decay": p.weight_decay, "always_adapt": True},
        {"params": [head[1].bias], "weight_decay": 0.0, "always_adapt": False},
    ]
    if p.optimizer == "lars":
        opt = Lars(params, lr=lr, momentum=0.9)
    else:
        opt = torch.optim.SGD(
            [{k: v for k, v in g.items() if k != "always_adapt"} for g in params], lr=lr, momentum=0.9
        )
    batch = min(p.batch_size, len(train_x))
    per_epoch = max(1, len(train_x) // batch)
    total, warmup = p.epochs * per_epoch, p.warmup_epochs * per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    history, step = [], 0
    for epoch in range(p.epochs):
        head.train()
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            for group in opt.param_groups:
                group["lr"] = lr * warmup_cosine_factor(step, total, warmup, 0.0)
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        metrics = head_accuracy(head, held_x, held_y)
        history.append({"epoch": epoch + 1, **metrics})
        if logger is not None:
            logger.log(
                {
                    "event": "eval",
                    "command": "linprobe",
                    "split": "heldout",
                    "step": step,
                    "epoch": epoch + 1,
                    **metrics,
                    "lr": opt.param_groups[0]["lr"],
                    "time": time.time(),
                }
            )
    return head, history


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices): `fraction` of each class (at least one image of a class with two or
    more) drawn with `seed`, so every lr is judged on the same images and the test split is never looked at."""
    gen = torch.Generator().manual_seed(seed)
    val = []
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        n = min(len(members) - 1, max(1, round(fraction * len(members))))
        val.append(members[torch.randperm(len(members), generator=gen)[:n]])
    val_idx = torch.cat(val).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten(), val_idx


def choose_lr(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: Config, log=print
) -> tuple[Config, dict[str, Any]]:
    """cfg with probe.base_lr set to the lr of probe.lr_grid whose head scores best (final epoch) on the validation
    split; ties go to the smaller lr. Also the search's record for linprobe.json."""
    p = cfg.probe
    train_idx, val_idx = validation_split(labels, p.val_fraction, cfg.seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ConfigError(
            f"probe.lr_grid: {len(labels)} training images leave no validation split at probe.val_fraction "
            f"{p.val_fraction}; use more images or an empty lr_grid"
        )
    scores = []
    for lr in p.lr_grid:
        trial = dataclasses.replace(cfg, probe=dataclasses.replace(p, base_lr=lr))
        _, history = train_head(
            features[train_idx], labels[train_idx], features[val_idx], labels[val_idx], num_classes, trial
        )
        scores.append(history[-1]["top1"])
    best = max(range(len(scores)), key=lambda i: (scores[i], -p.lr_grid[i]))
    chosen = p.lr_grid[best]
    log(
        f"[linprobe] base_lr {chosen} chosen on {len(val_idx)} validation images: "
        + ", ".join(f"{lr} -> {s:.2f}" for lr, s in zip(p.lr_grid, scores))
    )
    record = {"grid": list(p.lr_grid), "val_top1": scores, "chosen": chosen, "val_images": len(val_idx)}
    return dataclasses.replace(cfg, probe=dataclasses.replace(p, base_lr=chosen)), record


def linprobe(cfg: Config, run_dir: str | Path) -> dict[str, Any]:
    from mimkit.eval.probe_common import probe_setup

    run_dir = Path(run_dir)
    setup = probe_setup(cfg, run_dir)
    cfg = setup.cfg
    search = None
    if cfg.probe.lr_grid:
        cfg, search = choose_lr(setup.train_features, setup.data.train.labels, setup.num_classes, cfg)
    save_config(cfg, run_dir / "config.yaml")
    logger = MetricsLogger(run_dir, True)
    logger.drop_command("linprobe")  # a re-run replaces the previous probe's events (a kNN's stay)
    t0 = time.time()
    head, history = train_head(
        setup.train_features,
        setup.data.train.labels,
        setup.heldout_features,
        setup.data.heldout.labels,
        setup.num_classes,
        cfg,
        logger,
    )
    logger.close()
    ckpt_dir = run_dir / "checkpoints" / "last"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors(
        {k: v.contiguous() for k, v in head.state_dict().items() if v.is_floating_point()},
        ckpt_dir / "head.safetensors",
    )
    best = max(history, key=lambda r: r["top1"])
    results = {
        "init": setup.source.description,
        "pool": cfg.probe.pool,
        "optimizer": cfg.probe.optimizer,
        "epochs": cfg.probe.epochs,
        "base_lr": cfg.probe.base_lr,
        **({"lr_search": search} if search else {}),
        "top1": history[-1]["top1"],
        "top5": history[-1]["top5"],
        "best_top1": best["top1"],
        "best_epoch": best["epoch"],
        "train_images": len(setup.train_features),
        "heldout_images": len(setup.heldout_features),
        "features_reused": setup.reused,
        "seconds": time.time() - t0,
    }
    if not math.isfinite(results["top1"]):
        raise RuntimeError("linear probe diverged (non-finite accuracy); lower probe.base_lr")
    from mimkit.viz.curves import plot_loss_curves

    results["figure"] = str(
        plot_loss_curves(
            run_dir,
            run_dir / "figures" / "linprobe_curves.png",
            loss_label="cross-entropy of the linear head",
            eval_inputs="centre crops",
            score="top1",
            title=f"{run_dir.name}: linear probe on frozen features ({setup.source.description})",
            steps_per_epoch=max(1, len(setup.train_features) // min(cfg.probe.batch_size, len(setup.train_features))),
            command="linprobe",
        )
    )
    atomic_write_text(run_dir / "linprobe.json", json.dumps(results, indent=1))  # knn.json may sit beside it
    return results
