"""The data-scaling paper's proxy: MIM loss on a FIXED held-out subset with FIXED masks.

The subset (first `n` of a seeded permutation) and every mask (keyed by sample id with a constant epoch) depend
only on the seed, so the number is comparable across evaluations, checkpoints and runs. The same measure on a fixed
train subset makes the train/held-out gap, i.e. over-fitting, visible.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mimkit.data.imageset import ImageSet
from mimkit.data.keyed_random import FIXED_EPOCH, sample_keys, second_view_keys
from mimkit.data.transforms import eval_transform
from mimkit.engine.distributed import DistEnv, all_reduce_sum


def fixed_subset(data: ImageSet, n: int, seed: int) -> ImageSet:
    gen = torch.Generator().manual_seed(seed + 4242)
    positions = torch.randperm(len(data), generator=gen)[: min(n, len(data))]
    return data.subset(torch.sort(positions).values)


class ShardedEvaluator:
    """Sums per-batch statistics over this rank's share of a fixed image set, then all-reduces them: subclasses say
    what to sum (`batch_sums`) and how to report it (`summarize`)."""

    num_sums = 2
    shard = True  # False: every rank scores the whole set (for losses whose batches must not depend on ranks)

    def __init__(self, data: ImageSet, n: int | None, cfg: Any, env: DistEnv, autocast):
        self.data = fixed_subset(data, n, cfg.seed) if n is not None else data
        self.cfg, self.env, self.autocast = cfg, env, autocast
        self.batch_size = cfg.train.eval_batch_size

    def batch_sums(self, method: nn.Module, positions: torch.Tensor) -> list[float]:  # pragma: no cover
        raise NotImplementedError

    def summarize(self, sums: list[float]) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, method: nn.Module) -> dict[str, float]:
        was_training = method.training
        method.eval()
        shard = self.shard and self.env.enabled
        n = len(self.data)
        mine = torch.arange(self.env.rank, n, self.env.world_size) if shard else torch.arange(n)
        totals = [0.0] * self.num_sums
        for start in range(0, len(mine), self.batch_size):
            sums = self.batch_sums(method, mine[start : start + self.batch_size])
            totals = [a + b for a, b in zip(totals, sums)]
        if shard:
            totals = all_reduce_sum(totals, self.env)
        method.train(was_training)
        return self.summarize(totals)


class FixedMaskEvaluator(ShardedEvaluator):
    """`evaluate(method)` -> {'loss'}: mean MIM loss over the fixed subset with fixed masks (or, for contrastive
    methods, between two fixed augmented views)."""

    def __init__(self, data: ImageSet, n: int, cfg: Any, env: DistEnv, autocast, two_views=None):
        super().__init__(data, n, cfg, env, autocast)
        self.two_views = two_views  # a BatchAugment: contrastive methods compare two fixed augmented views
        # A contrastive loss depends on which images share a batch: the same batches on every rank and world size.
        self.shard = two_views is None

    def batch_sums(self, method: nn.Module, positions: torch.Tensor) -> list[float]:
        d = self.cfg.data
        raw, ids = self.data.batch(positions)
        raw = raw.to(self.env.device)
        keys = sample_keys(ids, FIXED_EPOCH).to(self.env.device)
        if self.two_views is not None:
            batch = {"images": self.two_views(raw, keys), "images2": self.two_views(raw, second_view_keys(keys))}
        else:
            batch = {"images": eval_transform(raw, d.img_size, d.mean, d.std)}
        with self.autocast():
            loss = method({**batch, "keys": keys})["loss"]
        return [float(loss) * len(positions), float(len(positions))]

    def summarize(self, sums: list[float]) -> dict[str, float]:
        return {"loss": sums[0] / max(sums[1], 1.0)}


def loss_evaluators(cfg: Any, data: Any, env: DistEnv, autocast, two_views=None) -> tuple[dict[str, Any], tuple]:
    """The pretraining objectives' evaluators: the fixed-mask loss on the held-out split and on a fixed train subset
    (best = lowest held-out loss); `two_views` as in FixedMaskEvaluator."""
    n = cfg.train.eval_samples
    evaluators = {
        "heldout": FixedMaskEvaluator(data.heldout, n, cfg, env, autocast, two_views),
        "train_fixed": FixedMaskEvaluator(data.train, n, cfg, env, autocast, two_views),
    }
    return evaluators, ("heldout", "loss", "min")
