"""Model analysis in the style of "Revealing the Dark Secrets of MIM": attention distance, attention entropy and
head diversity per (layer, head), layer-by-layer CKA, and attention maps, for any timm ViT.

Metric functions take softmax attention probabilities of shape (batch, heads, tokens, tokens) (and optionally their
exact log-probabilities and a patch mask) and return a (heads,) tensor averaged over the batch and the patch queries;
`linear_cka` takes two (samples, features) matrices.
"""

from mimkit.analysis.capture import AttentionCapture, attention_from_input, capture_attention
from mimkit.analysis.cka import MinibatchCKA, linear_cka, unbiased_hsic
from mimkit.analysis.foreground import foreground_patches
from mimkit.analysis.metrics import (
    attention_distance,
    attention_entropy,
    head_js_divergence,
    head_kl_divergence,
    pairwise_head_js,
    pairwise_head_kl,
    patch_distances,
)
from mimkit.analysis.stats import AttentionMaps, AttentionStats, ViTGeometry

__all__ = [
    "AttentionCapture",
    "AttentionMaps",
    "AttentionStats",
    "MinibatchCKA",
    "ViTGeometry",
    "attention_distance",
    "attention_entropy",
    "attention_from_input",
    "capture_attention",
    "foreground_patches",
    "head_js_divergence",
    "head_kl_divergence",
    "linear_cka",
    "pairwise_head_js",
    "pairwise_head_kl",
    "patch_distances",
    "unbiased_hsic",
]
