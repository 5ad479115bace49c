"""Supervised classification: the model (layer-wise lr decay, label smoothing, Mixup/CutMix), its options and its
registry entry."""

from mimkit.methods.supervised.model import Supervised, build_supervised, layer_decay_groups, layer_id
from mimkit.methods.supervised.options import SupervisedOptions
from mimkit.methods.supervised.spec import SPEC

__all__ = ["SPEC", "Supervised", "SupervisedOptions", "build_supervised", "layer_decay_groups", "layer_id"]
