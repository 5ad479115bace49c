"""Weights for a run to start from or learn from: sources.py resolves a source (a run or checkpoint, an exported
.safetensors, timm:NAME[@FILE], scratch) into its architecture and timm-layout encoder weights; loading.py loads
them into an encoder."""

from mimkit.weights.loading import load_encoder_weights
from mimkit.weights.sources import ARCH_KEYS, Source, adopt_source, resolve_source

__all__ = ["ARCH_KEYS", "Source", "adopt_source", "load_encoder_weights", "resolve_source"]
