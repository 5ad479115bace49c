"""Top-1 / top-5 accuracy and cross-entropy of a classifier on a split (all ranks share the work)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.data.transforms import eval_transform
from mimkit.heldout import ShardedEvaluator


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """How many of the batch have the label among the k highest scores, for each k."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [float(hits[:, :k].any(dim=1).sum()) for k in ks]


class AccuracyEvaluator(ShardedEvaluator):
    """`evaluate(method)` -> {'loss', 'top1', 'top5'} (percent) on the whole split, or a fixed subset of `n`."""

    num_sums = 4

    def batch_sums(self, method: nn.Module, positions: torch.Tensor) -> list[float]:
        d = self.cfg.data
        images = eval_transform(self.data.images[positions].to(self.env.device), d.img_size, d.mean, d.std)
        labels = self.data.labels[positions].to(self.env.device)
        with self.autocast():
            logits = method.logits(images)
        c1, c5 = topk_correct(logits, labels)
        return [float(F.cross_entropy(logits.float(), labels, reduction="sum")), c1, c5, float(len(positions))]

    def summarize(self, sums: list[float]) -> dict[str, float]:
        loss, top1, top5, count = sums
        count = max(count, 1.0)
        return {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}


def accuracy_evaluators(cfg: Any, data: Any, env: Any, autocast) -> tuple[dict[str, Any], tuple]:
    """Classification: top-1/top-5 on the whole held-out split and on a fixed train subset (best = highest
    held-out top-1)."""
    evaluators = {
        "heldout": AccuracyEvaluator(data.heldout, None, cfg, env, autocast),
        "train_fixed": AccuracyEvaluator(data.train, cfg.train.eval_samples, cfg, env, autocast),
    }
    return evaluators, ("heldout", "top1", "max")
