"""The tracking head: where did the item go between two frames? A correlation head in the manner of Siamese
trackers (SiamFC's cross-correlation of template and search features), small enough to fit on a frozen encoder.

Each patch of frame 1 is matched against every patch of frame 2 by a softmax over scaled dot products of learned
projections; the expected position of its match minus its own position is that patch's motion. A second, dense
head scores which patches to trust (the item's, rather than the static background's, which match themselves);
the image's displacement is the softmax-weighted mean of the patch motions. Every step is differentiable, so the
encoder can be fine-tuned through it; the learned parts are two linear projections and a small convolution, so a
frozen encoder's features must already tell patches apart.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TrackingHead(nn.Module):
    def __init__(self, dim: int, dense_head: type[nn.Module]):
        super().__init__()
        self.query, self.key = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.trust = dense_head(2 * dim, 1)  # on both frames' features side by side

    def forward(self, first: torch.Tensor, second: torch.Tensor, centres: torch.Tensor) -> dict[str, torch.Tensor]:
        """first, second: (B, D, gh, gw) patch features of the two frames; centres: (P, 2) patch centres (x, y).
        Returns the displacement (B, 2) in canvas fractions, the patch motions (B, P, 2) and trust (B, P)."""
        a, b = first.flatten(2).transpose(1, 2).float(), second.flatten(2).transpose(1, 2).float()  # (B, P, D)
        match = (self.query(a) @ self.key(b).transpose(1, 2) / math.sqrt(a.shape[-1])).softmax(-1)  # (B, P, P)
        motions = match @ centres - centres  # (B, P, 2)
        trust = self.trust(torch.cat([first, second], 1)).float().flatten(1).softmax(-1)  # (B, P)
        return {"displacement": (trust.unsqueeze(-1) * motions).sum(1), "motions": motions, "trust": trust}
