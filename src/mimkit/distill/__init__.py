"""TinyMIM distillation: relation losses (Q-K and V-V attention maps), partial forward passes of timm ViTs,
targets, the teacher and sequential chains. The training objective itself is `mimkit.methods.distill.Distill`."""
from mimkit.distill.relations import relation_kl, relation_log_probs, relation_losses, split_heads
from mimkit.distill.targets import TARGETS, parse_targets, regression_loss
from mimkit.distill.vit_blocks import block_index, block_qkv
from mimkit.models.encoder import embed_tokens

__all__ = ["TARGETS", "block_index", "block_qkv", "embed_tokens", "parse_targets", "regression_loss",
           "relation_kl", "relation_log_probs", "relation_losses", "split_heads"]
