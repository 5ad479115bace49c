"""Top-1 / top-5 accuracy and cross-entropy of a classifier on a split (all ranks share the work)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.data.datasets import ImageSet
from mimkit.data.transforms import eval_transform
from mimkit.engine.distributed import DistEnv, all_reduce_sum
from mimkit.heldout import fixed_subset


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """How many of the batch have the label among the k highest scores, for each k."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [float(hits[:, :k].any(dim=1).sum()) for k in ks]


class AccuracyEvaluator:
    """`evaluate(method)` -> {'loss', 'top1', 'top5'} (percent) on the whole split, or a fixed subset of `n`."""

    def __init__(self, data: ImageSet, n: int | None, cfg: Any, env: DistEnv, autocast):
        self.data = fixed_subset(data, n, cfg.seed) if n is not None else data
        self.cfg, self.env, self.autocast = cfg, env, autocast
        self.batch_size = cfg.train.eval_batch_size

    @torch.no_grad()
    def evaluate(self, method: nn.Module) -> dict[str, float]:
        was_training = method.training
        method.eval()
        d = self.cfg.data
        mine = torch.arange(self.env.rank, len(self.data), self.env.world_size)
        loss_sum, top1, top5, count = 0.0, 0.0, 0.0, 0.0
        for start in range(0, len(mine), self.batch_size):
            positions = mine[start:start + self.batch_size]
            images = eval_transform(self.data.images[positions].to(self.env.device), d.img_size, d.mean, d.std)
            labels = self.data.labels[positions].to(self.env.device)
            with self.autocast():
                logits = method.logits(images)
            loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            c1, c5 = topk_correct(logits, labels)
            top1, top5, count = top1 + c1, top5 + c5, count + len(positions)
        loss_sum, top1, top5, count = all_reduce_sum([loss_sum, top1, top5, count], self.env)
        method.train(was_training)
        count = max(count, 1.0)
        return {"loss": loss_sum / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}
