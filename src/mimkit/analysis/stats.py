"""Streaming accumulators: per-(layer, head) attention statistics and attention-map rows, updated batch by batch
so that nothing per image is kept."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mimkit.analysis.metrics import (
    attention_distance,
    attention_entropy,
    image_side,
    pairwise_head_js,
    pairwise_head_kl,
    per_head_kl,
    query_count,
)

ATTENTION_METRICS = ("distance", "entropy", "kl", "js")
PAIRWISE = {"kl": pairwise_head_kl, "js": pairwise_head_js}  # head-diversity divergences: (heads, heads) per layer


@dataclass
class ViTGeometry:
    """What the metrics need to know about a ViT: sizes, patch grid and how many prefix tokens lead the sequence."""

    depth: int
    heads: int
    grid_size: tuple[int, int]
    patch_size: tuple[int, int]
    num_prefix_tokens: int

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]


@dataclass
class AttentionStats:
    """Sums of per-head metrics weighted by how many (image, query) pairs each batch averaged over, per layer;
    `summary()` turns them into means.

    `metrics` is any subset of distance, entropy, kl, js. Distance rows are renormalised after dropping prefix
    tokens only with `renormalize_distance` (default off, the ViT convention); entropy, KL and JS always use
    renormalised rows. `update` takes the log-probabilities too when it has them (exact KL), and a patch mask to
    keep some patches only (metrics.py).
    """

    geometry: ViTGeometry
    metrics: tuple[str, ...] = ATTENTION_METRICS
    renormalize_distance: bool = False
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    pairwise: dict[str, torch.Tensor] = field(default_factory=dict)
    images: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __post_init__(self):
        g = self.geometry
        unknown = set(self.metrics) - set(ATTENTION_METRICS)
        if unknown:
            raise ValueError(f"unknown attention metrics {sorted(unknown)}; known: {ATTENTION_METRICS}")
        for name in self.metrics:
            self.sums[name] = torch.zeros(g.depth, g.heads, dtype=torch.float64)
            if name in PAIRWISE:
                self.pairwise[name] = torch.zeros(g.depth, g.heads, g.heads, dtype=torch.float64)
        self.images = torch.zeros(g.depth, dtype=torch.long)
        self.weights = torch.zeros(g.depth, dtype=torch.float64)

    @property
    def kl_pairwise(self) -> torch.Tensor | None:
        return self.pairwise.get("kl")

    def update(
        self,
        layer: int,
        attn: torch.Tensor,
        log_attn: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
    ) -> None:
        g = self.geometry
        if attn.shape[-1] != g.num_patches + g.num_prefix_tokens:
            raise ValueError(
                f"layer {layer}: attention over {attn.shape[-1]} tokens, expected "
                f"{g.num_patches} patches + {g.num_prefix_tokens} prefix tokens"
            )
        w = query_count(attn, g.num_prefix_tokens, patch_mask)
        p = g.num_prefix_tokens
        if "distance" in self.metrics:
            d = attention_distance(attn, g.grid_size, g.patch_size, p, self.renormalize_distance, patch_mask)
            self.sums["distance"][layer] += d.double().cpu() * w
        if "entropy" in self.metrics:
            self.sums["entropy"][layer] += attention_entropy(attn, p, True, patch_mask).double().cpu() * w
        for name, pairwise_fn in PAIRWISE.items():
            if name in self.metrics:
                pairwise = pairwise_fn(attn, p, True, patch_mask, log_attn).double().cpu()
                self.pairwise[name][layer] += pairwise * w
                self.sums[name][layer] += per_head_kl(pairwise) * w
        self.images[layer] += attn.shape[0]
        self.weights[layer] += w

    def per_head(self, metric: str) -> torch.Tensor:
        """(depth, heads) mean over every image and query seen."""
        if int(self.images.min()) == 0:
            raise ValueError("no images were analysed for some layer")
        return self.sums[metric] / self.weights.clamp_min(1).view(-1, 1)

    def summary(self) -> dict[str, list]:
        out: dict[str, list] = {}
        for metric in self.metrics:
            heads = self.per_head(metric)
            out[metric] = heads.tolist()
            out[f"{metric}_layer_mean"] = heads.mean(1).tolist()
        if "distance" in self.metrics:  # comparable across resolutions
            side = image_side(self.geometry.grid_size, self.geometry.patch_size)
            out["distance_fraction"] = (self.per_head("distance") / side).tolist()
            out["distance_fraction_layer_mean"] = (self.per_head("distance").mean(1) / side).tolist()
        for name, sums in self.pairwise.items():
            out[f"{name}_pairwise"] = (sums / self.weights.clamp_min(1).view(-1, 1, 1)).tolist()
        out["images"] = int(self.images[0])
        out["queries"] = float(self.weights[0])
        return out


@dataclass
class AttentionMaps:
    """Attention rows of chosen query patches for the first `num_images` images: per layer, the mean over heads
    of each query's attention over the patch keys, (images, queries, patches)."""

    geometry: ViTGeometry
    queries: list[tuple[int, int]]
    num_images: int
    rows: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self):
        gh, gw = self.geometry.grid_size
        for r, c in self.queries:
            if not (0 <= r < gh and 0 <= c < gw):
                raise ValueError(f"query patch ({r}, {c}) is outside the {gh}x{gw} patch grid")
        self.token_index = [self.geometry.num_prefix_tokens + r * gw + c for r, c in self.queries]

    def seen(self, layer: int) -> int:
        return sum(t.shape[0] for t in self.rows.get(layer, []))

    def update(self, layer: int, attn: torch.Tensor) -> None:
        need = self.num_images - self.seen(layer)
        if need <= 0:
            return
        p = self.geometry.num_prefix_tokens
        rows = attn[:need, :, self.token_index, p:].mean(1)  # (images, queries, patches)
        self.rows.setdefault(layer, []).append(rows.float().cpu())

    def tensor(self) -> torch.Tensor:
        """(layers, images, queries, patches)."""
        return torch.stack([torch.cat(self.rows[layer]) for layer in sorted(self.rows)])
