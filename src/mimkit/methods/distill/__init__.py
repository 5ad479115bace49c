"""TinyMIM distillation (Ren et al. 2023), in one package: the objective (model.py), relation losses
(relations.py), the CLS / feature losses (targets.py), partial forward passes of timm ViTs (vit_blocks.py), the
`distill:` section with the parsing of its targets (options.py) and the registry entry (spec.py). Two modules run
distillations and are imported by the programs only, because they read run configs: teacher.py (resolve, check,
load the teacher) and chain.py (sequential distillation)."""

from mimkit.lazy import lazy_exports

# torch and timm load with the first of these that is read, not with the package (see mimkit/lazy.py)
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Distill": "mimkit.methods.distill.model",
        "build_distill": "mimkit.methods.distill.model",
        "check_head_split": "mimkit.methods.distill.model",
        "relation_heads": "mimkit.methods.distill.model",
        "DistillConfig": "mimkit.methods.distill.options",
        "relation_kl": "mimkit.methods.distill.relations",
        "relation_log_probs": "mimkit.methods.distill.relations",
        "relation_losses": "mimkit.methods.distill.relations",
        "split_heads": "mimkit.methods.distill.relations",
        "SPEC": "mimkit.methods.distill.spec",
        "TARGETS": "mimkit.methods.distill.options",
        "parse_targets": "mimkit.methods.distill.options",
        "regression_loss": "mimkit.methods.distill.targets",
        "block_index": "mimkit.methods.distill.vit_blocks",
        "block_qkv": "mimkit.methods.distill.vit_blocks",
        "embed_tokens": "mimkit.models.encoder",
    },
)

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
