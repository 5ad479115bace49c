"""Per-head attention statistics of the Dark Secrets paper: mean attention distance, head diversity (KL or
Jensen-Shannon divergence between heads) and attention entropy.

Every function takes softmax attention probabilities `attn` of shape (batch, heads, tokens, tokens), where the first
`num_prefix_tokens` tokens are prefix tokens (class token, registers) and the rest are patch tokens in row-major
order, and returns one value per head, averaged over the batch and over the patch queries. Prefix rows and columns
are always dropped (prefix tokens have no position in the image); `renormalize` decides whether each patch query's
attention over the patch keys is rescaled to sum to one afterwards.

- `log_attn`: the log-probabilities (log-softmax of the logits, as the recompute capture gives them). The head
  divergences then take their logarithms from it, exactly; from probabilities alone, float32 softmax underflows to
  0 for peaked heads and KL must clamp (log of float32's tiniest normal = -87), which inflates it.
- `patch_mask`: (batch, patches) bool, the patches to keep (e.g. the foreground, analysis/foreground.py). Only
  kept patches are queries, only kept patches are keys, and each query's attention over the kept keys is
  renormalised, so attention sinks in the background drop out. Images with no kept patch do not count.
"""

from __future__ import annotations

import math

import torch

# Smallest probability used inside a logarithm: float32 softmax can underflow to exactly 0.
_TINY = torch.finfo(torch.float32).tiny


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


def _check(attn: torch.Tensor, num_prefix_tokens: int) -> None:
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must have shape (batch, heads, tokens, tokens), got {tuple(attn.shape)}")
    if not 0 <= num_prefix_tokens < attn.shape[-1]:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens} leaves no patch tokens in {attn.shape[-1]} tokens")


def _check_mask(patch_mask: torch.Tensor | None, a: torch.Tensor) -> None:
    if patch_mask is not None and tuple(patch_mask.shape) != (a.shape[0], a.shape[-1]):
        raise ValueError(
            f"patch_mask must have shape (batch, patches) = {(a.shape[0], a.shape[-1])}, got {tuple(patch_mask.shape)}"
        )


def patch_attention(
    attn: torch.Tensor, num_prefix_tokens: int = 1, renormalize: bool = False, patch_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(batch, heads, patches, patches): attention among patch tokens only (and among kept patches only, rows
    renormalised, with a `patch_mask`)."""
    _check(attn, num_prefix_tokens)
    a = attn[:, :, num_prefix_tokens:, num_prefix_tokens:].float()
    _check_mask(patch_mask, a)
    if patch_mask is not None:
        a = a * patch_mask[:, None, None, :].to(a.dtype)
        renormalize = True
    if renormalize:
        a = a / a.sum(-1, keepdim=True).clamp_min(_TINY)
    return a


def patch_log_attention(
    log_attn: torch.Tensor, num_prefix_tokens: int = 1, renormalize: bool = True, patch_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """`patch_attention` in log space: renormalising subtracts each row's log-sum-exp, masked keys get -inf."""
    _check(log_attn, num_prefix_tokens)
    a = log_attn[:, :, num_prefix_tokens:, num_prefix_tokens:].float()
    _check_mask(patch_mask, a)
    if patch_mask is not None:
        a = a.masked_fill(~patch_mask[:, None, None, :], float("-inf"))
        renormalize = True
    if renormalize:
        norm = torch.logsumexp(a, -1, keepdim=True)
        a = a - torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm))  # a row with no key stays -inf
    return a


def query_mean(values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(heads,) from per-query (batch, heads, queries) values: the mean over the batch and the kept queries."""
    if patch_mask is None:
        return values.mean(dim=(0, 2))
    keep = patch_mask[:, None, :].expand_as(values)
    count = patch_mask.sum().clamp_min(1).to(values.dtype)
    return torch.where(keep, values, torch.zeros_like(values)).sum(dim=(0, 2)) / count


def query_count(attn: torch.Tensor, num_prefix_tokens: int = 1, patch_mask: torch.Tensor | None = None) -> int:
    """How many (image, query) pairs a metric averages over: its weight when batches are pooled."""
    if patch_mask is not None:
        return int(patch_mask.sum())
    return attn.shape[0] * (attn.shape[-1] - num_prefix_tokens)


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
    patch_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(heads,) mean attention distance in pixels: sum_j A_ij * ||p_i - p_j|| averaged over queries i and the
    batch. Default as in the ViT paper: prefix tokens dropped, rows not renormalised, so attention a query spends
    on the class token counts as no distance at all. With a `patch_mask`, rows are renormalised over kept keys."""
    a = patch_attention(attn, num_prefix_tokens, renormalize, patch_mask)
    dist = patch_distances(grid_size, patch_size, a.device)
    if dist.shape[0] != a.shape[-1]:
        raise ValueError(
            f"grid {_pair(grid_size)} has {dist.shape[0]} patches but the attention has "
            f"{a.shape[-1]} patch tokens (num_prefix_tokens={num_prefix_tokens})"
        )
    return query_mean((a * dist).sum(-1), patch_mask)


def image_side(grid_size: int | tuple[int, int], patch_size: int | tuple[int, int]) -> float:
    """The image side in pixels that attention distances are divided by to compare resolutions: sqrt(H * W)."""
    (gh, gw), (ph, pw) = _pair(grid_size), _pair(patch_size)
    return math.sqrt(gh * ph * gw * pw)


def attention_entropy(
    attn: torch.Tensor, num_prefix_tokens: int = 1, renormalize: bool = True, patch_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(heads,) entropy in nats of each patch query's attention over the patch keys, averaged over queries and
    the batch. log(patches) means uniform attention, 0 attention on a single key."""
    a = patch_attention(attn, num_prefix_tokens, renormalize, patch_mask)
    return query_mean(-(torch.xlogy(a, a)).sum(-1), patch_mask)


def _plogq(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """p * log q, 0 where p is 0 (whatever log q is, -inf included)."""
    return torch.where(p > 0, p * log_q, torch.zeros_like(p))


def pairwise_head_kl(
    attn: torch.Tensor,
    num_prefix_tokens: int = 1,
    renormalize: bool = True,
    patch_mask: torch.Tensor | None = None,
    log_attn: torch.Tensor | None = None,
) -> torch.Tensor:
    """(heads, heads): entry [h, g] is KL(A_h || A_g) summed over keys, averaged over queries and the batch. With
    `log_attn` the logarithms are exact; from probabilities alone they are clamped at float32's tiniest normal. One
    head at a time against all, so memory stays at a few copies of `attn`."""
    if log_attn is not None:
        log_a = patch_log_attention(log_attn, num_prefix_tokens, renormalize, patch_mask)
        a = log_a.exp()
    else:
        a = patch_attention(attn, num_prefix_tokens, renormalize, patch_mask)
        log_a = a.clamp_min(_TINY).log()
    plogp = _plogq(a, log_a).sum(-1)  # (batch, heads, queries)
    heads = a.shape[1]
    out = torch.empty(heads, heads, device=a.device)
    for h in range(heads):
        cross = _plogq(a[:, h : h + 1], log_a).sum(-1)  # sum_j A_h log A_g for every g: (batch, heads, queries)
        out[h] = query_mean(plogp[:, h : h + 1] - cross, patch_mask)
    return out


def pairwise_head_js(
    attn: torch.Tensor,
    num_prefix_tokens: int = 1,
    renormalize: bool = True,
    patch_mask: torch.Tensor | None = None,
    log_attn: torch.Tensor | None = None,
) -> torch.Tensor:
    """(heads, heads) Jensen-Shannon divergence between heads, JS(P, Q) = (KL(P || M) + KL(Q || M)) / 2 with
    M = (P + Q) / 2, averaged over queries and the batch. Symmetric and bounded by ln 2 (nats), and finite even
    where one head gives a key zero probability, so a few peaked heads cannot dominate the layer's mean."""
    if log_attn is not None:
        log_a = patch_log_attention(log_attn, num_prefix_tokens, renormalize, patch_mask)
    else:
        log_a = patch_attention(attn, num_prefix_tokens, renormalize, patch_mask).log()  # log 0 = -inf is fine here
    a = log_a.exp()
    heads = a.shape[1]
    out = torch.empty(heads, heads, device=a.device)
    for h in range(heads):
        log_m = torch.logaddexp(log_a[:, h : h + 1], log_a) - math.log(2.0)  # (batch, heads, queries, keys)
        to_m_h = (_plogq(a[:, h : h + 1], log_a[:, h : h + 1]) - _plogq(a[:, h : h + 1], log_m)).sum(-1)
        to_m_g = (_plogq(a, log_a) - _plogq(a, log_m)).sum(-1)
        out[h] = query_mean(0.5 * (to_m_h + to_m_g), patch_mask)
    return out


def head_kl_divergence(
    attn: torch.Tensor,
    num_prefix_tokens: int = 1,
    renormalize: bool = True,
    patch_mask: torch.Tensor | None = None,
    log_attn: torch.Tensor | None = None,
) -> torch.Tensor:
    """(heads,) head diversity: each head's mean KL divergence to the other heads of the same layer,
    (1/(H-1)) sum_{g != h} KL(A_h || A_g). Zero when all heads attend alike; the layer score is the mean over
    heads. Rows are renormalised by default so each is a probability distribution (KL is then never negative)."""
    pairwise = pairwise_head_kl(attn, num_prefix_tokens, renormalize, patch_mask, log_attn)
    return per_head_kl(pairwise)


def head_js_divergence(
    attn: torch.Tensor,
    num_prefix_tokens: int = 1,
    renormalize: bool = True,
    patch_mask: torch.Tensor | None = None,
    log_attn: torch.Tensor | None = None,
) -> torch.Tensor:
    """(heads,) head diversity by Jensen-Shannon divergence: each head's mean JS to the other heads (in [0, ln 2])."""
    return per_head_kl(pairwise_head_js(attn, num_prefix_tokens, renormalize, patch_mask, log_attn))


def per_head_kl(pairwise: torch.Tensor) -> torch.Tensor:
    """(heads,) from a (heads, heads) divergence matrix: the mean of each row without its diagonal."""
    heads = pairwise.shape[0]
    if heads < 2:
        return torch.zeros(heads, device=pairwise.device)
    off = pairwise.sum(1) - pairwise.diagonal()
    return off / (heads - 1)
