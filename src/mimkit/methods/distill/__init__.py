"""TinyMIM distillation (Ren et al. 2023), in one package: the objective (model.py), relation losses
(relations.py), targets and their losses (targets.py), partial forward passes of timm ViTs (vit_blocks.py), the
`distill:` section (options.py) and the registry entry (spec.py). Two modules run distillations and are imported
by the programs only, because they read run configs: teacher.py (resolve, check, load the teacher) and chain.py
(sequential distillation)."""

from mimkit.methods.distill.model import Distill, build_distill, check_head_split, relation_heads
from mimkit.methods.distill.options import DistillConfig
from mimkit.methods.distill.relations import relation_kl, relation_log_probs, relation_losses, split_heads
from mimkit.methods.distill.spec import SPEC
from mimkit.methods.distill.targets import TARGETS, parse_targets, regression_loss
from mimkit.methods.distill.vit_blocks import block_index, block_qkv
from mimkit.models.encoder import embed_tokens

__all__ = [
    "SPEC",
    "TARGETS",
    "Distill",
    "DistillConfig",
    "block_index",
    "block_qkv",
    "build_distill",
    "check_head_split",
    "embed_tokens",
    "parse_targets",
    "regression_loss",
    "relation_heads",
    "relation_kl",
    "relation_log_probs",
    "relation_losses",
    "split_heads",
]
