"""Linear CKA (centred kernel alignment) between representations, in full and streamed over minibatches.

`linear_cka(x, y)` compares two (samples, features) matrices directly. For whole networks, where holding every
layer's features for every image is out of the question, `MinibatchCKA` follows Nguyen et al. (2021): per minibatch
it forms each layer's linear Gram matrix, adds up the unbiased HSIC estimator (Song et al., 2012) for every pair of
layers, and reports CKA = sum HSIC(K, L) / sqrt(sum HSIC(K, K) * sum HSIC(L, L)). As in the reference code, each
minibatch's term is the unnormalised product of U-centred Gram matrices, n(n-3) times the estimator, so a batch of
n images weighs n(n-3): a short last batch counts for little instead of as much as a full one. Memory is then a few
(batch, batch) matrices per layer, whatever the number of images.
"""

from __future__ import annotations

import torch


def gram(x: torch.Tensor) -> torch.Tensor:
    """(n, n) linear kernel of (n, ...) features, each sample flattened to one vector, in float64."""
    x = x.reshape(x.shape[0], -1).double()
    return x @ x.T


def unbiased_hsic(grams_a: torch.Tensor, grams_b: torch.Tensor) -> torch.Tensor:
    """(A, B) unbiased HSIC estimates between every pair of (A, n, n) and (B, n, n) Gram matrices of the same n
    samples: [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), K~ being K with a zero diagonal."""
    n = grams_a.shape[-1]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples per minibatch, got {n}")
    eye = torch.eye(n, dtype=torch.bool, device=grams_a.device)
    ka = grams_a.double().masked_fill(eye, 0.0)
    kb = grams_b.double().masked_fill(eye, 0.0)
    trace = torch.einsum("aij,bij->ab", ka, kb)  # tr(K L) for symmetric K, L
    row_a, row_b = ka.sum(-1), kb.sum(-1)  # (A, n), (B, n)
    sum_a, sum_b = row_a.sum(-1), row_b.sum(-1)
    middle = torch.outer(sum_a, sum_b) / ((n - 1) * (n - 2))
    last = 2.0 / (n - 2) * (row_a @ row_b.T)
    return (trace + middle - last) / (n * (n - 3))


def _centred_gram(x: torch.Tensor) -> torch.Tensor:
    k = gram(x)
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def linear_cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Linear CKA between (samples, features) matrices `x` and `y` (feature counts may differ):
    ||Yc' Xc||_F^2 / (||Xc' Xc||_F ||Yc' Yc||_F) with column-centred Xc, Yc. In [0, 1]; 1 for x against itself;
    unchanged by orthogonal transforms and isotropic scaling of either side. `unbiased=True` uses the unbiased
    HSIC estimator instead (needs at least 4 samples), which removes the upward bias of small sample counts."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: x has {x.shape[0]} samples and y has {y.shape[0]}; rows must pair up")
    if unbiased:
        k = torch.stack([gram(x), gram(y)])
        h = unbiased_hsic(k, k)
        return (h[0, 1] / (h[0, 0] * h[1, 1]).sqrt()).float()
    kx, ky = _centred_gram(x), _centred_gram(y)
    cross = (kx * ky).sum()  # = ||Yc' Xc||_F^2
    return (cross / ((kx * kx).sum() * (ky * ky).sum()).sqrt()).float()


class MinibatchCKA:
    """Streams CKA between the layers of several models over minibatches of the same images.

    `update(grams)` takes, per model, a (layers, n, n) stack of Gram matrices for the current minibatch (`gram` of
    each layer's output). `within(m)` is model m's (layers, layers) CKA matrix; `between(m, k)` the
    (layers of m, layers of k) matrix. Each minibatch weighs n(n-3) (see the module docstring); minibatches of
    fewer than 4 images are skipped (the estimator is undefined).
    """

    def __init__(self, num_models: int):
        self.num_models = num_models
        self.hsic: dict[tuple[int, int], torch.Tensor] = {}
        self.batches = 0
        self.images = 0

    def update(self, grams: list[torch.Tensor]) -> bool:
        if len(grams) != self.num_models:
            raise ValueError(f"expected Gram stacks for {self.num_models} models, got {len(grams)}")
        if grams[0].shape[-1] < 4:
            return False
        n = grams[0].shape[-1]
        for m in range(self.num_models):
            for k in range(m, self.num_models):
                h = unbiased_hsic(grams[m], grams[k]).cpu() * (n * (n - 3))  # <U(K), U(L)>, the reference's term
                self.hsic[(m, k)] = self.hsic[(m, k)] + h if (m, k) in self.hsic else h
        self.batches += 1
        self.images += grams[0].shape[-1]
        return True

    def between(self, m: int, k: int) -> torch.Tensor:
        if not self.hsic:
            raise ValueError("no minibatch of at least 4 images was seen")
        if m > k:
            return self.between(k, m).T
        self_m = self.hsic[(m, m)].diagonal()
        self_k = self.hsic[(k, k)].diagonal()
        return (self.hsic[(m, k)] / torch.outer(self_m, self_k).clamp_min(1e-300).sqrt()).float()

    def within(self, m: int) -> torch.Tensor:
        return self.between(m, m)
