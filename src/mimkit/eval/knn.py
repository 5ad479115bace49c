"""`mimkit knn`: weighted k-nearest-neighbour classification on frozen features (DINO's protocol: cosine
similarity, k=20, votes weighted by exp(similarity / T) with T=0.07)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mimkit.config import Config, save_config
from mimkit.engine.atomic import atomic_write_text
from mimkit.engine.metrics import MetricsLogger


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """(Q, num_classes) vote scores for each query."""
    train = F.normalize(train_feats.float(), dim=1)
    k = min(k, len(train))
    scores = []
    for start in range(0, len(query), chunk):
        q = F.normalize(query[start : start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(q), num_classes)
        votes.scatter_add_(1, train_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_eval(cfg: Config, run_dir: str | Path) -> dict[str, Any]:
    from mimkit.eval.accuracy import topk_correct
    from mimkit.eval.probe_common import probe_setup

    run_dir = Path(run_dir)
    setup = probe_setup(cfg, run_dir)
    cfg, train, held = setup.cfg, setup.train_features, setup.heldout_features
    t0 = time.time()
    scores = knn_predict(
        train, setup.data.train.labels, held, setup.num_classes, cfg.probe.knn_k, cfg.probe.knn_temperature
    )
    top1, top5 = topk_correct(scores, setup.data.heldout.labels)
    n = len(held)
    results = {
        "init": setup.source.description,
        "k": cfg.probe.knn_k,
        "temperature": cfg.probe.knn_temperature,
        "pool": cfg.probe.pool,
        "top1": 100 * top1 / n,
        "top5": 100 * top5 / n,
        "train_images": len(train),
        "heldout_images": n,
        "features_reused": setup.reused,
        "seconds": time.time() - t0,
    }
    save_config(cfg, run_dir / "config.yaml")
    atomic_write_text(run_dir / "knn.json", json.dumps(results, indent=1))  # linprobe.json may sit beside it
    logger = MetricsLogger(run_dir, True)
    logger.drop_command("knn")
    logger.log({"event": "eval", "command": "knn", "split": "heldout", "step": 0, **results, "time": time.time()})
    logger.close()
    return results
