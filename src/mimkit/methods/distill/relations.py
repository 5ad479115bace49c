"""TinyMIM's relation targets: per head, softmax(Q K^T / sqrt(d)) and softmax(V V^T / sqrt(d)) of one block, and
the KL divergence from the teacher's relations to the student's.

Each side is scaled by its own head dimension (head dims may differ between teacher and student); only the head
count and token count must agree. The KL is computed from logits with log_softmax on both sides, so probabilities
that underflow to zero never produce log(0) (a pitfall of the official code, which takes .log() of a softmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def relation_log_probs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log softmax(a b^T / sqrt(d)) over the last axis, for (batch, heads, tokens, d) inputs, in float32 even under
    bf16 autocast (low-precision logits shift the relations by far more than their differences)."""
    d = a.shape[-1]
    with torch.autocast(a.device.type, enabled=False):
        logits = (a.float() @ b.float().transpose(-2, -1)) * d**-0.5
        return F.log_softmax(logits, dim=-1)


def relation_kl(teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over keys, averaged over batch, heads and queries."""
    if teacher_log_probs.shape != student_log_probs.shape:
        raise ValueError(
            f"teacher relations {tuple(teacher_log_probs.shape)} and student relations "
            f"{tuple(student_log_probs.shape)} differ: head and token counts must match"
        )
    with torch.autocast(teacher_log_probs.device.type, enabled=False):
        kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
        return kl.mean()


def relation_losses(
    q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, q_s: torch.Tensor, k_s: torch.Tensor, v_s: torch.Tensor
) -> dict[str, torch.Tensor]:
    """{'qk': KL of the Q-K relations, 'vv': KL of the V-V relations}. Every tensor is (batch, heads, tokens,
    head_dim); the teacher's (t) and student's (s) head dims may differ. No gradient reaches the teacher's tensors:
    they are detached here, whatever the caller did."""
    qk = relation_kl(relation_log_probs(q_t.detach(), k_t.detach()), relation_log_probs(q_s, k_s))
    vv = relation_kl(relation_log_probs(v_t.detach(), v_t.detach()), relation_log_probs(v_s, v_s))
    return {"qk": qk, "vv": vv}


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, dim) -> (batch, heads, tokens, dim / heads): the standard head split of a projection."""
    b, n, dim = x.shape
    if dim % heads:
        raise ValueError(f"width {dim} cannot be split into {heads} heads")
    return x.reshape(b, n, heads, dim // heads).transpose(1, 2)
