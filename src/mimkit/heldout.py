"""The data-scaling paper's proxy: MIM loss on a FIXED held-out subset with FIXED masks.

The subset (first `n` of a seeded permutation) and every mask (keyed by sample id with a constant epoch) depend
only on the seed, so the number is comparable across evaluations, checkpoints and runs. The same measure on a fixed
train subset makes the train/held-out gap, i.e. over-fitting, visible.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mimkit.data.datasets import ImageSet
from mimkit.data.keyed_random import sample_keys, second_view_keys
from mimkit.data.transforms import eval_transform
from mimkit.engine.distributed import DistEnv, all_reduce_sum

FIXED_EPOCH = -1  # the "epoch" that keys evaluation masks: never used by training


def fixed_subset(data: ImageSet, n: int, seed: int) -> ImageSet:
    gen = torch.Generator().manual_seed(seed + 4242)
    positions = torch.randperm(len(data), generator=gen)[:min(n, len(data))]
    return data.subset(torch.sort(positions).values)


class FixedMaskEvaluator:
    """`evaluate(method)` -> mean MIM loss over the fixed subset (all ranks share the work)."""

    def __init__(self, data: ImageSet, n: int, cfg: Any, env: DistEnv, autocast, two_views=None):
        self.data = fixed_subset(data, n, cfg.seed)
        self.two_views = two_views  # a BatchAugment: contrastive methods compare two fixed augmented views
        self.cfg = cfg
        self.env = env
        self.autocast = autocast
        self.batch_size = cfg.train.eval_batch_size

    @torch.no_grad()
    def evaluate(self, method: nn.Module) -> dict[str, float]:
        was_training = method.training
        method.eval()
        d = self.cfg.data
        mine = torch.arange(self.env.rank, len(self.data), self.env.world_size)
        total, count = 0.0, 0.0
        for start in range(0, len(mine), self.batch_size):
            positions = mine[start:start + self.batch_size]
            raw, ids = self.data.batch(positions)
            raw = raw.to(self.env.device)
            keys = sample_keys(ids, FIXED_EPOCH).to(self.env.device)
            if self.two_views is not None:
                batch = {"images": self.two_views(raw, keys), "images2": self.two_views(raw, second_view_keys(keys))}
            else:
                batch = {"images": eval_transform(raw, d.img_size, d.mean, d.std)}
            with self.autocast():
                loss = method({**batch, "keys": keys})["loss"]
            total += float(loss) * len(positions)
            count += len(positions)
        total, count = all_reduce_sum([total, count], self.env)
        method.train(was_training)
        return {"loss": total / max(count, 1.0)}
