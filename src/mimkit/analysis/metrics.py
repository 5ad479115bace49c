"""Per-head attention statistics of the Dark Secrets paper: mean attention distance, head diversity (KL between
heads) and attention entropy.

Every function takes softmax attention probabilities `attn` of shape (batch, heads, tokens, tokens), where the first
`num_prefix_tokens` tokens are prefix tokens (class token, registers) and the rest are patch tokens in row-major
order, and returns one value per head, averaged over the batch and over the patch queries. Prefix rows and columns
are always dropped (prefix tokens have no position in the image); `renormalize` decides whether each patch query's
attention over the patch keys is rescaled to sum to one afterwards.
"""

from __future__ import annotations

import torch

# Smallest probability used inside a logarithm: float32 softmax can underflow to exactly 0.
_TINY = torch.finfo(torch.float32).tiny


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


def patch_attention(attn: torch.Tensor, num_prefix_tokens: int = 1, renormalize: bool = False) -> torch.Tensor:
    """(batch, heads, patches, patches): attention among patch tokens only."""
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must have shape (batch, heads, tokens, tokens), got {tuple(attn.shape)}")
    if not 0 <= num_prefix_tokens < attn.shape[-1]:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens} leaves no patch tokens in {attn.shape[-1]} tokens")
    a = attn[:, :, num_prefix_tokens:, num_prefix_tokens:].float()
    if renormalize:
        a = a / a.sum(-1, keepdim=True).clamp_min(_TINY)
    return a


def patch_distances(
    grid_size: int | tuple[int, int], patch_size: int | tuple[int, int], device: torch.device | str | None = None
) -> torch.Tensor:
    """(patches, patches) Euclidean distances in pixels between patch centres, patches in row-major order."""
    gh, gw = _pair(grid_size)
    ph, pw = _pair(patch_size)
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )
    centres = torch.stack([rows.flatten() * ph, cols.flatten() * pw], dim=1)
    return torch.cdist(centres, centres).float().to(device)


def attention_distance(
    attn: torch.Tensor,
    grid_size: int | tuple[int, int],
    patch_size: int | tuple[int, int],
    num_prefix_tokens: int = 1,
    renormalize: bool = False,
) -> torch.Tensor:
    """(heads,) mean attention distance in pixels: sum_j A_ij * ||p_i - p_j|| averaged over queries i and the
    batch. Default as in the ViT paper: prefix tokens dropped, rows not renormalised, so attention a query spends
    on the class token counts as no distance at all."""
    a = patch_attention(attn, num_prefix_tokens, renormalize)
    dist = patch_distances(grid_size, patch_size, a.device)
    if dist.shape[0] != a.shape[-1]:
        raise ValueError(
            f"grid {_pair(grid_size)} has {dist.shape[0]} patches but the attention has "
            f"{a.shape[-1]} patch tokens (num_prefix_tokens={num_prefix_tokens})"
        )
    return (a * dist).sum(-1).mean(dim=(0, 2))


def attention_entropy(attn: torch.Tensor, num_prefix_tokens: int = 1, renormalize: bool = True) -> torch.Tensor:
    """(heads,) entropy in nats of each patch query's attention over the patch keys, averaged over queries and
    the batch. log(patches) means uniform attention, 0 attention on a single key."""
    a = patch_attention(attn, num_prefix_tokens, renormalize)
    return -(torch.xlogy(a, a)).sum(-1).mean(dim=(0, 2))


def pairwise_head_kl(attn: torch.Tensor, num_prefix_tokens: int = 1, renormalize: bool = True) -> torch.Tensor:
    """(heads, heads): entry [h, g] is KL(A_h || A_g) summed over keys, averaged over queries and the batch. One
    head at a time against all, so memory stays at a few copies of `attn`."""
    a = patch_attention(attn, num_prefix_tokens, renormalize)
    log_a = a.clamp_min(_TINY).log()
    plogp = torch.xlogy(a, a).sum(-1)  # (batch, heads, queries)
    heads = a.shape[1]
    out = torch.empty(heads, heads, device=a.device)
    for h in range(heads):
        cross = (a[:, h : h + 1] * log_a).sum(-1)  # sum_j A_h log A_g for every g: (batch, heads, queries)
        out[h] = (plogp[:, h : h + 1] - cross).mean(dim=(0, 2))
    return out


def head_kl_divergence(attn: torch.Tensor, num_prefix_tokens: int = 1, renormalize: bool = True) -> torch.Tensor:
    """(heads,) head diversity: each head's mean KL divergence to the other heads of the same layer,
    (1/(H-1)) sum_{g != h} KL(A_h || A_g). Zero when all heads attend alike; the layer score is the mean over
    heads. Rows are renormalised by default so each is a probability distribution (KL is then never negative)."""
    pairwise = pairwise_head_kl(attn, num_prefix_tokens, renormalize)
    return per_head_kl(pairwise)


def per_head_kl(pairwise: torch.Tensor) -> torch.Tensor:
    """(heads,) from a (heads, heads) KL matrix: the mean of each row without its diagonal."""
    heads = pairwise.shape[0]
    if heads < 2:
        return torch.zeros(heads, device=pairwise.device)
    off = pairwise.sum(1) - pairwise.diagonal()
    return off / (heads - 1)
