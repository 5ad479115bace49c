"""Model analysis: attention metrics against hand-computed answers and brute-force loops, CKA against its defining
formulas, attention capture against timm's own unfused probabilities, streaming statistics against whole-batch
computation, and the `mimkit analyze` command end to end."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from conftest import cli_error, run_cli, sets, tiny_config
from mimkit.analysis import (
    AttentionCapture,
    AttentionMaps,
    AttentionStats,
    MinibatchCKA,
    ViTGeometry,
    attention_distance,
    attention_entropy,
    capture_attention,
    head_kl_divergence,
    linear_cka,
    pairwise_head_kl,
    unbiased_hsic,
)
from mimkit.analysis.cka import gram
from mimkit.cli import main
from mimkit.config import ConfigError

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST is not installed"
)

GRID = (3, 4)  # 12 patch tokens
P = GRID[0] * GRID[1]


def random_attention(
    batch: int, heads: int, patches: int, prefix: int = 1, seed: int = 0, sharpness: float = 3.0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = prefix + patches
    return (torch.randn(batch, heads, tokens, tokens, generator=g) * sharpness).softmax(-1)


def patch_only_attention(rows: torch.Tensor, prefix_mass: float = 0.0) -> torch.Tensor:
    """(batch, heads, P, P) rows over patch keys -> (batch, heads, 1+P, 1+P) with `prefix_mass` of every patch
    query on the class token (the patch part scaled by 1 - prefix_mass) and a uniform class-token row."""
    b, h, p, _ = rows.shape
    attn = torch.full((b, h, p + 1, p + 1), 1.0 / (p + 1))
    attn[:, :, 1:, 0] = prefix_mass
    attn[:, :, 1:, 1:] = rows * (1.0 - prefix_mass)
    return attn


def mean_pairwise_patch_distance(grid: tuple[int, int], patch: tuple[int, int]) -> float:
    """Mean Euclidean distance in pixels between the centres of two patches drawn uniformly, plain loops."""
    cells = [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    total = 0.0
    for r1, c1 in cells:
        for r2, c2 in cells:
            total += math.hypot((r1 - r2) * patch[0], (c1 - c2) * patch[1])
    return total / len(cells) ** 2


# ----------------------------------------------------------------------------------------------------------------
# Attention metrics


def test_attention_on_self_has_zero_distance_for_every_head():
    rows = torch.eye(P).expand(2, 3, P, P)
    attn = patch_only_attention(rows)
    attn[:, :, 0] = torch.rand(2, 3, P + 1)  # the class-token row plays no part
    for renormalize in (False, True):
        # zero in exact arithmetic; a tolerance, since rounding depends on the CPU's vector width (see below)
        torch.testing.assert_close(
            attention_distance(attn, GRID, 5, renormalize=renormalize), torch.zeros(3), rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("patch_size", [5, (5, 3)])
def test_uniform_attention_distance_is_the_mean_patch_distance(patch_size):
    attn = patch_only_attention(torch.full((2, 3, P, P), 1.0 / P))
    pair = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    expected = mean_pairwise_patch_distance(GRID, pair)
    torch.testing.assert_close(
        attention_distance(attn, GRID, patch_size), torch.full((3,), expected), rtol=1e-6, atol=1e-5
    )


def test_attention_on_the_class_token_counts_as_no_distance_unless_renormalised():
    attn = patch_only_attention(torch.full((1, 2, P, P), 1.0 / P), prefix_mass=0.5)
    uniform = mean_pairwise_patch_distance(GRID, (5, 5))
    torch.testing.assert_close(attention_distance(attn, GRID, 5), torch.full((2,), uniform / 2), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(
        attention_distance(attn, GRID, 5, renormalize=True), torch.full((2,), uniform), rtol=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("prefix_mass", [0.0, 0.3])
def test_entropy_of_uniform_attention_is_log_patches(prefix_mass):
    attn = patch_only_attention(torch.full((2, 3, P, P), 1.0 / P), prefix_mass)
    torch.testing.assert_close(attention_entropy(attn), torch.full((3,), math.log(P)), rtol=1e-6, atol=1e-6)


def test_entropy_of_one_hot_attention_is_zero():
    rows = torch.zeros(2, 3, P, P)
    rows[..., 5] = 1.0  # every query looks at patch 5 only
    torch.testing.assert_close(attention_entropy(patch_only_attention(rows)), torch.zeros(3), rtol=0, atol=1e-6)


def test_identical_heads_have_zero_kl():
    one_head = random_attention(2, 1, P, seed=1)
    attn = one_head.expand(2, 4, P + 1, P + 1).contiguous()
    # zero in exact arithmetic; the vectorised log and sum leave rounding of ~1e-8 whose sign and size depend on
    # the CPU's vector width (seen: 7.45e-09 on another x86 machine), so a tolerance, not equality
    torch.testing.assert_close(pairwise_head_kl(attn), torch.zeros(4, 4), rtol=0, atol=1e-6)
    torch.testing.assert_close(head_kl_divergence(attn), torch.zeros(4), rtol=0, atol=1e-6)


def test_kl_between_two_known_heads_matches_the_hand_computation():
    # 2x2 grid, 4 patch queries; head 0 puts 0.85 on one patch (a different one per query), head 1 is uniform
    p_rows = [[0.85 if j == i else 0.05 for j in range(4)] for i in range(4)]
    q_rows = [[0.25] * 4 for _ in range(4)]
    attn = patch_only_attention(torch.tensor([[p_rows, q_rows]]), prefix_mass=0.2)  # renormalised away
    kl_pq = sum(sum(p * math.log(p / q) for p, q in zip(pr, qr)) for pr, qr in zip(p_rows, q_rows)) / 4
    kl_qp = sum(sum(q * math.log(q / p) for p, q in zip(pr, qr)) for pr, qr in zip(p_rows, q_rows)) / 4
    assert kl_pq == pytest.approx(0.85 * math.log(3.4) + 0.15 * math.log(0.2))
    pairwise = pairwise_head_kl(attn)
    torch.testing.assert_close(pairwise, torch.tensor([[0.0, kl_pq], [kl_qp, 0.0]]), rtol=1e-5, atol=1e-6)
    assert abs(kl_pq - kl_qp) > 0.05  # KL is not symmetric, and the matrix keeps the order
    torch.testing.assert_close(head_kl_divergence(attn), torch.tensor([kl_pq, kl_qp]), rtol=1e-5, atol=1e-6)


def test_per_head_kl_is_the_mean_over_the_other_heads():
    attn = random_attention(3, 4, P, seed=2)
    pairwise = pairwise_head_kl(attn)
    torch.testing.assert_close(pairwise.diagonal(), torch.zeros(4), rtol=0, atol=1e-6)  # rounding, as above
    assert (pairwise[~torch.eye(4, dtype=torch.bool)] > 1e-3).all()  # random heads differ far beyond rounding
    expected = torch.stack([(pairwise[h].sum() - pairwise[h, h]) / 3 for h in range(4)])
    torch.testing.assert_close(head_kl_divergence(attn), expected)


def brute_force_metrics(
    attn: torch.Tensor, grid: tuple[int, int], patch: tuple[int, int], prefix: int, renormalize: bool
) -> tuple[list[float], list[float], list[float]]:
    """Distance, entropy and head KL per head, one image, head and query at a time, in plain Python."""
    a = attn.double().tolist()
    batch, heads, tokens = len(a), len(a[0]), len(a[0][0])
    patches = tokens - prefix
    centre = [((i // grid[1]) * patch[0], (i % grid[1]) * patch[1]) for i in range(patches)]

    def row(n, h, i):
        r = a[n][h][prefix + i][prefix:]
        if renormalize:
            s = sum(r)
            r = [v / s for v in r]
        return r

    distance, entropy, kl = [0.0] * heads, [0.0] * heads, [0.0] * heads
    count = batch * patches
    for n in range(batch):
        for h in range(heads):
            for i in range(patches):
                r = row(n, h, i)
                distance[h] += sum(r[j] * math.dist(centre[i], centre[j]) for j in range(patches)) / count
                entropy[h] += -sum(v * math.log(v) for v in r if v > 0) / count
                for g in range(heads):
                    if g != h:
                        other = row(n, g, i)
                        kl[h] += sum(p * math.log(p / q) for p, q in zip(r, other) if p > 0) / count / (heads - 1)
    return distance, entropy, kl


@pytest.mark.parametrize("prefix", [1, 2])
@pytest.mark.parametrize("renormalize", [False, True])
def test_vectorised_metrics_match_a_brute_force_loop(prefix, renormalize):
    attn = random_attention(2, 3, P, prefix=prefix, seed=3)
    distance, entropy, kl = brute_force_metrics(attn, GRID, (5, 3), prefix, renormalize)
    kw = dict(num_prefix_tokens=prefix, renormalize=renormalize)
    for got, expected in (
        (attention_distance(attn, GRID, (5, 3), **kw), distance),
        (attention_entropy(attn, **kw), entropy),
        (head_kl_divergence(attn, **kw), kl),
    ):
        torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=1e-5)


METRICS = {
    "distance": lambda attn, **kw: attention_distance(attn, GRID, 5, **kw),
    "entropy": attention_entropy,
    "kl": head_kl_divergence,
    "pairwise_kl": pairwise_head_kl,
}


@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize(
    "attn, kw",
    [
        (torch.rand(3, 1 + P, 1 + P), {}),  # no batch dimension
        (torch.rand(2, 3, 1 + P, P), {}),  # not square
        (torch.rand(2, 3, 1 + P, 1 + P), {"num_prefix_tokens": 1 + P}),  # no patch tokens left
        (torch.rand(2, 3, 1 + P, 1 + P), {"num_prefix_tokens": -1}),
    ],
    ids=["3d", "not-square", "all-prefix", "negative-prefix"],
)
def test_bad_attention_shapes_raise(metric, attn, kw):
    with pytest.raises(ValueError):
        METRICS[metric](attn, **kw)


@pytest.mark.parametrize("grid", [(3, 3), (4, 4), 4])
def test_grid_that_does_not_match_the_tokens_raises(grid):
    with pytest.raises(ValueError, match="patches"):
        attention_distance(random_attention(1, 2, P), grid, 5)


# ----------------------------------------------------------------------------------------------------------------
# CKA


def _features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_of_a_representation_with_itself_is_one(unbiased):
    x = _features(30, 7, 0)
    assert linear_cka(x, x, unbiased=unbiased).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling(unbiased):
    x, y = _features(30, 6, 1), _features(30, 4, 2) + 0.5 * _features(30, 6, 1)[:, :4]
    q, _ = torch.linalg.qr(_features(6, 6, 3))
    base = linear_cka(x, y, unbiased=unbiased).item()
    assert 0.05 < base < 0.95  # a value that can move
    assert linear_cka(x @ q, y, unbiased=unbiased).item() == pytest.approx(base, abs=1e-6)
    assert linear_cka(x * 37.5, y, unbiased=unbiased).item() == pytest.approx(base, abs=1e-6)
    assert linear_cka(x, y * 1e-3, unbiased=unbiased).item() == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_is_not_invariant_to_anisotropic_scaling(unbiased):
    x = _features(40, 6, 4)
    stretched = x * torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1000.0], dtype=torch.float64)  # invertible, not orthogonal
    assert linear_cka(x, stretched, unbiased=unbiased).item() < 0.8


def test_linear_cka_equals_the_feature_space_formula():
    x, y = _features(25, 5, 5), _features(25, 8, 6)
    y[:, :5] += x  # correlated, so the value is not near 0
    xc = x.numpy() - x.numpy().mean(0)
    yc = y.numpy() - y.numpy().mean(0)
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert linear_cka(y, x).item() == pytest.approx(expected, rel=1e-5)


def test_linear_cka_of_rows_with_different_counts_raises():
    with pytest.raises(ValueError, match="pair up"):
        linear_cka(_features(5, 2, 0), _features(6, 2, 0))


def hsic_u_statistic(k: list[list[float]], l: list[list[float]]) -> float:  # noqa: E741 (K, L as in the papers)
    """Unbiased HSIC as the U-statistic over distinct ordered index quadruples (i, j, q, r):
    E[k_ij l_ij] + E[k_ij] E[l_qr] - 2 E[k_ij l_iq], each expectation over distinct indices."""
    n = len(k)
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i][j] * l[i][j] + k[i][j] * l[q][r] - 2 * k[i][j] * l[i][q]
        count += 1
    return total / count


def hsic_song_formula(k: list[list[float]], l: list[list[float]]) -> float:  # noqa: E741
    """Song et al. (2012), eq. 5, written out with loops over K~, L~ (zero diagonals)."""
    n = len(k)
    kt = [[0.0 if i == j else k[i][j] for j in range(n)] for i in range(n)]
    lt = [[0.0 if i == j else l[i][j] for j in range(n)] for i in range(n)]
    trace = sum(kt[i][j] * lt[j][i] for i in range(n) for j in range(n))
    sum_k = sum(map(sum, kt))
    sum_l = sum(map(sum, lt))
    one_kl_one = sum(kt[i][j] * lt[j][m] for i in range(n) for j in range(n) for m in range(n))
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * one_kl_one) / (n * (n - 3))


@pytest.mark.parametrize("reference", [hsic_u_statistic, hsic_song_formula])
def test_unbiased_hsic_matches_its_definition(reference):
    grams_a = torch.stack([gram(_features(6, d, 10 + d)) for d in (3, 5)])
    grams_b = torch.stack([gram(_features(6, d, 20 + d)) for d in (2, 4, 7)])
    grams_b[1] = grams_a[0] * 0.5 + grams_b[1]  # one dependent pair
    hsic = unbiased_hsic(grams_a, grams_b)
    assert hsic.shape == (2, 3)
    for a in range(2):
        for b in range(3):
            assert hsic[a, b].item() == pytest.approx(
                reference(grams_a[a].tolist(), grams_b[b].tolist()), rel=1e-9, abs=1e-9
            )


def test_unbiased_hsic_needs_four_samples():
    k = gram(_features(3, 2, 0))[None]
    with pytest.raises(ValueError, match="at least 4"):
        unbiased_hsic(k, k)


def test_minibatch_cka_weights_each_minibatch_by_n_n_minus_3():
    widths = [[4, 6, 5], [3, 8]]  # model 0: 3 layers, model 1: 2 layers
    sizes = [5, 3, 7, 6]  # the minibatch of 3 is skipped
    cka = MinibatchCKA(num_models=2)
    batches, accepted = [], []
    for bi, n in enumerate(sizes):
        base = _features(n, 4, 100 + bi)  # shared signal, so the layers are related
        feats = [
            [torch.cat([base, _features(n, d, 1000 * bi + 10 * m + li)], 1) for li, d in enumerate(ws)]
            for m, ws in enumerate(widths)
        ]
        grams = [torch.stack([gram(f) for f in fs]) for fs in feats]
        accepted.append(cka.update(grams))
        if n >= 4:
            batches.append([[g.tolist() for g in gs] for gs in grams])
    assert accepted == [True, False, True, True]
    assert cka.batches == 3 and cka.images == 18

    def summed(m, i, k, j):  # the reference sums <U(K), U(L)> = n(n-3) HSIC_u: a batch of n weighs n(n-3)
        return sum(len(b[m][i]) * (len(b[m][i]) - 3) * hsic_u_statistic(b[m][i], b[k][j]) for b in batches)

    for m, k in [(0, 0), (1, 1), (0, 1), (1, 0)]:
        expected = torch.tensor(
            [
                [summed(m, i, k, j) / math.sqrt(summed(m, i, m, i) * summed(k, j, k, j)) for j in range(len(widths[k]))]
                for i in range(len(widths[m]))
            ]
        )
        torch.testing.assert_close(cka.between(m, k), expected.float(), rtol=1e-5, atol=1e-6)


def u_centred(k: list[list[float]]) -> list[list[float]]:
    """U-centring (Szekely & Rizzo 2014), written out: zero diagonal, and off it
    k_ij - row_i / (n-2) - col_j / (n-2) + total / ((n-1)(n-2)), rows and totals over the zero-diagonal matrix."""
    n = len(k)
    kt = [[0.0 if i == j else k[i][j] for j in range(n)] for i in range(n)]
    rows = [sum(r) for r in kt]
    cols = [sum(kt[i][j] for i in range(n)) for j in range(n)]
    total = sum(rows)
    return [
        [
            0.0 if i == j else kt[i][j] - rows[i] / (n - 2) - cols[j] / (n - 2) + total / ((n - 1) * (n - 2))
            for j in range(n)
        ]
        for i in range(n)
    ]


def reference_minibatch_cka(batches_x: list[torch.Tensor], batches_y: list[torch.Tensor]) -> float:
    """Nguyen et al.'s minibatch CKA as their code computes it: sums of unnormalised U-centred products."""

    def product(a, b):
        return sum(x * y for ra, rb in zip(a, b) for x, y in zip(ra, rb))

    xy = xx = yy = 0.0
    for x, y in zip(batches_x, batches_y):
        kx, ky = u_centred(gram(x).tolist()), u_centred(gram(y).tolist())
        xy, xx, yy = xy + product(kx, ky), xx + product(kx, kx), yy + product(ky, ky)
    return xy / math.sqrt(xx * yy)


def test_minibatch_cka_matches_the_reference_over_unequal_minibatches():
    """1,000 images in batches of 64 leave a last batch of 40; 133 images leave one of 5. Equal weights per batch
    would differ from the reference (the issue measured up to 0.15); the n(n-3) weights match it."""
    for total, size in ((200, 64), (133, 64)):
        x, y = _features(total, 6, 1), _features(total, 6, 2)
        y = y + 0.3 * torch.cat([x[:, :3], torch.zeros(total, 3)], 1) ** 2  # a nonlinear relation
        bx, by = list(x.split(size)), list(y.split(size))
        cka = MinibatchCKA(num_models=2)
        for a, b in zip(bx, by):
            cka.update([gram(a)[None], gram(b)[None]])
        assert cka.between(0, 1).item() == pytest.approx(reference_minibatch_cka(bx, by), rel=1e-6)
        equal_weights = sum(unbiased_hsic(gram(a)[None], gram(b)[None]).item() for a, b in zip(bx, by))
        equal_weights /= math.sqrt(
            sum(unbiased_hsic(gram(a)[None], gram(a)[None]).item() for a in bx)
            * sum(unbiased_hsic(gram(b)[None], gram(b)[None]).item() for b in by)
        )
        assert abs(equal_weights - cka.between(0, 1).item()) > 1e-4  # the test can tell the two weightings apart


def test_minibatch_cka_of_one_batch_is_the_unbiased_cka_of_the_whole_set():
    x, y = _features(50, 7, 3), _features(50, 4, 4)
    y = y + x[:, :4]
    cka = MinibatchCKA(num_models=2)
    cka.update([gram(x)[None], gram(y)[None]])
    assert cka.between(0, 1).item() == pytest.approx(linear_cka(x, y, unbiased=True).item(), rel=1e-5)


def test_minibatch_cka_matrices_are_consistent():
    cka = MinibatchCKA(num_models=2)
    for bi in range(3):
        x = _features(8, 5, bi)
        cka.update(
            [
                torch.stack([gram(x), gram(x**2), gram(x[:, :2])]),
                torch.stack([gram(x + _features(8, 5, 50 + bi)), gram(x[:, 3:])]),
            ]
        )
    for m in range(2):
        within = cka.within(m)
        torch.testing.assert_close(within.diagonal(), torch.ones(within.shape[0]))
        torch.testing.assert_close(within, within.T)
    assert cka.between(0, 1).shape == (3, 2)
    torch.testing.assert_close(cka.between(1, 0), cka.between(0, 1).T)


def test_minibatch_cka_skips_tiny_batches_and_reports_nothing_seen():
    cka = MinibatchCKA(num_models=1)
    assert cka.update([torch.stack([gram(_features(3, 2, 0))])]) is False
    assert cka.batches == 0 and cka.images == 0
    with pytest.raises(ValueError, match="no minibatch"):
        cka.within(0)
    with pytest.raises(ValueError, match="1 models"):
        cka.update([torch.zeros(1, 5, 5), torch.zeros(1, 5, 5)])


# ----------------------------------------------------------------------------------------------------------------
# Capture


def tiny_vit(seed: int = 0, **kwargs) -> nn.Module:
    """A 3-block timm ViT on 32 px images (8x8 patches of 4 px, 65 tokens) with sharpened attention, so that
    attention is far from uniform and a wrong capture cannot pass by accident."""
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, depth=3, pretrained=False, **kwargs
    ).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(4.0)
            if block.attn.qkv.bias is not None:
                block.attn.qkv.bias.normal_()
            for norm in (block.attn.q_norm, block.attn.k_norm):
                if isinstance(norm, nn.LayerNorm):
                    norm.weight.normal_()
                    norm.bias.normal_()
    return model


def _images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kwargs", [{}, {"qk_norm": True}, {"qkv_bias": False}], ids=["default", "qk-norm", "no-bias"])
def test_recomputed_attention_equals_timms_unfused_probabilities(kwargs):
    model = tiny_vit(**kwargs)
    assert all(block.attn.fused_attn for block in model.blocks)
    images = _images()
    recomputed = capture_attention(model, images)
    unfused = capture_attention(model, images, mode="unfused")
    assert len(recomputed) == len(unfused) == 3
    for layer, (a, b) in enumerate(zip(recomputed, unfused)):
        assert a.shape == b.shape == (2, 3, 65, 65)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=lambda m: f"layer {layer}: {m}")
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 65), atol=1e-5, rtol=0)
    assert max(a.max().item() for a in recomputed) > 0.2  # not trivially uniform (1/65)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("mode", ["recompute", "unfused"])
def test_capture_leaves_the_model_as_it_was(mode):
    model = tiny_vit()
    images = _images(1)
    with torch.no_grad():
        before = model.forward_features(images)
    seen = []
    with AttentionCapture(
        model,
        on_attention=lambda layer, a: seen.append(layer),
        on_features=lambda layer, x: seen.append(("features", layer)),
        mode=mode,
    ):
        assert _hook_count(model) == 6
        if mode == "unfused":
            assert not any(block.attn.fused_attn for block in model.blocks)
        with torch.no_grad():
            during = model.forward_features(images)
    assert seen == [0, ("features", 0), 1, ("features", 1), 2, ("features", 2)]
    assert _hook_count(model) == 0
    assert all(block.attn.fused_attn is True for block in model.blocks)
    with torch.no_grad():
        after = model.forward_features(images)
    assert torch.equal(after, before)  # the fused path is back
    if mode == "recompute":
        assert torch.equal(during, before)  # hooks observe, they do not change the forward pass
    else:
        torch.testing.assert_close(during, before, atol=1e-4, rtol=1e-4)


def test_capture_hands_over_block_outputs():
    model = tiny_vit()
    images = _images(2)
    outputs = {}
    with AttentionCapture(model, on_features=lambda layer, x: outputs.__setitem__(layer, x)), torch.no_grad():
        model.forward_features(images)
        x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
        expected = []
        for block in model.blocks:
            x = block(x)
            expected.append(x)
    assert sorted(outputs) == [0, 1, 2]
    for layer in range(3):
        torch.testing.assert_close(outputs[layer], expected[layer])


def test_capture_cleans_up_when_the_forward_pass_fails():
    model = tiny_vit()
    with pytest.raises(RuntimeError):
        with AttentionCapture(model, on_attention=lambda *_: None, mode="unfused"), torch.no_grad():
            model.forward_features(torch.randn(1, 5, 32, 32))  # wrong channel count
    assert _hook_count(model) == 0
    assert all(block.attn.fused_attn is True for block in model.blocks)


class _LinearBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])


class _NoBlocks(nn.Module):
    pass


@pytest.mark.parametrize("model", [_LinearBlocks(), _NoBlocks()], ids=["linear-blocks", "no-blocks"])
def test_capture_refuses_models_without_timm_attention(model):
    with pytest.raises(ConfigError, match="timm"):
        AttentionCapture(model, on_attention=lambda *_: None)


def test_capture_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="recompute"):
        AttentionCapture(tiny_vit(), on_attention=lambda *_: None, mode="fused")


# ----------------------------------------------------------------------------------------------------------------
# Streaming statistics

GEOMETRY = ViTGeometry(depth=2, heads=3, grid_size=GRID, patch_size=(5, 3), num_prefix_tokens=1)


def _stream(batch_sizes: list[int], seed: int = 7) -> list[list[torch.Tensor]]:
    """Per batch, per layer: random attention of that batch's images."""
    return [
        [random_attention(n, GEOMETRY.heads, P, seed=seed + 10 * b + layer) for layer in range(GEOMETRY.depth)]
        for b, n in enumerate(batch_sizes)
    ]


def _state_numel(stats: AttentionStats) -> int:
    pairwise = sum(t.numel() for t in stats.pairwise.values())
    return sum(t.numel() for t in stats.sums.values()) + pairwise + stats.images.numel() + stats.weights.numel()


@pytest.mark.parametrize("renormalize", [False, True])
def test_streamed_stats_equal_the_metrics_of_all_images_at_once(renormalize):
    stream = _stream([3, 1, 5, 2])
    stats = AttentionStats(GEOMETRY, renormalize_distance=renormalize)
    for batch in stream:
        for layer, attn in enumerate(batch):
            stats.update(layer, attn)
    for layer in range(GEOMETRY.depth):
        everything = torch.cat([batch[layer] for batch in stream])
        assert everything.shape[0] == 11
        expected = {
            "distance": attention_distance(everything, GRID, (5, 3), renormalize=renormalize),
            "entropy": attention_entropy(everything),
            "kl": head_kl_divergence(everything),
        }
        per_image = {
            "distance": torch.stack(
                [attention_distance(a[None], GRID, (5, 3), renormalize=renormalize) for a in everything]
            ).mean(0),
            "entropy": torch.stack([attention_entropy(a[None]) for a in everything]).mean(0),
            "kl": torch.stack([head_kl_divergence(a[None]) for a in everything]).mean(0),
        }
        for metric in ("distance", "entropy", "kl"):
            got = stats.per_head(metric)[layer].float()
            torch.testing.assert_close(got, expected[metric], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got, per_image[metric], rtol=1e-5, atol=1e-6)
        summary_pairwise = torch.tensor(stats.summary()["kl_pairwise"][layer], dtype=torch.float32)
        torch.testing.assert_close(summary_pairwise, pairwise_head_kl(everything), rtol=1e-5, atol=1e-6)
    summary = stats.summary()
    assert summary["images"] == 11
    assert np.asarray(summary["distance"]).shape == (2, 3) and np.asarray(summary["kl_pairwise"]).shape == (2, 3, 3)
    torch.testing.assert_close(
        torch.tensor(summary["entropy_layer_mean"]), torch.tensor(summary["entropy"]).mean(1), rtol=1e-6, atol=1e-6
    )


def test_stats_state_does_not_grow_with_the_number_of_images():
    small, large = AttentionStats(GEOMETRY), AttentionStats(GEOMETRY)
    for stats, sizes in ((small, [1]), (large, [4, 4, 4, 4, 4])):
        for batch in _stream(sizes):
            for layer, attn in enumerate(batch):
                stats.update(layer, attn)
    assert int(large.images[0]) == 20 and int(small.images[0]) == 1
    for stats in (small, large):
        assert {k: tuple(v.shape) for k, v in stats.sums.items()} == {
            m: (2, 3) for m in ("distance", "entropy", "kl", "js")
        }
        assert stats.kl_pairwise.shape == (2, 3, 3)
    assert _state_numel(small) == _state_numel(large)


def test_stats_reject_a_token_count_that_does_not_fit_the_geometry():
    stats = AttentionStats(GEOMETRY)
    with pytest.raises(ValueError, match="tokens"):
        stats.update(0, random_attention(2, 3, P + 1))
    with pytest.raises(ValueError, match="no images"):
        stats.per_head("distance")
    with pytest.raises(ValueError, match="unknown"):
        AttentionStats(GEOMETRY, metrics=("distance", "sharpness"))


def test_attention_maps_keep_only_the_first_images():
    queries = [(0, 0), (2, 3), (1, 2)]
    maps = AttentionMaps(GEOMETRY, queries, num_images=3)
    stream = _stream([2, 2, 2])
    for batch in stream:
        for layer, attn in enumerate(batch):
            maps.update(layer, attn)
    rows = maps.tensor()
    assert rows.shape == (2, 3, 3, P)  # (layers, images, queries, patches)
    for layer in range(2):
        first = torch.cat([batch[layer] for batch in stream])[:3]
        for qi, (r, c) in enumerate(queries):
            token = 1 + r * GRID[1] + c
            torch.testing.assert_close(rows[layer, :, qi], first[:, :, token, 1:].mean(1))
    assert maps.seen(0) == 3


@pytest.mark.parametrize("query", [(3, 0), (0, 4), (-1, 0)])
def test_attention_maps_reject_a_query_outside_the_grid(query):
    with pytest.raises(ValueError, match="outside"):
        AttentionMaps(GEOMETRY, [(0, 0), query], num_images=2)


# ----------------------------------------------------------------------------------------------------------------
# `mimkit analyze` end to end

ANALYZE = [
    "--images",
    "40",
    "--batch-size",
    "16",
    "--data",
    "fashion-mnist",
    *sets(["device=cpu", f"data.root={FMNIST}", "model.name=mim_vit_femto", "data.img_size=16"]),
]
SYNTHETIC = sets(["device=cpu", "data.name=synthetic", "data.img_size=16", "model.name=mim_vit_femto"])


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    """A tiny MAE run (femto ViT, 16 px, 1 channel: 4x4 patches + class token, 3 layers x 3 heads)."""
    from mimkit.training import pretrain

    out = tmp_path_factory.mktemp("analysis") / "mae"
    pretrain(tiny_config("train.steps=2", "train.eval_every=100", "train.ckpt_every=100"), out)
    return out


@pytest.fixture(scope="module")
def report(mae_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis") / "report"
    proc = run_cli(
        "analyze", "report", "--model", f"A={mae_run}", "--model", "B=scratch", "--out", str(out), *ANALYZE, check=True
    )
    return proc, out, json.loads((out / "results.json").read_text())


def _finite(value) -> bool:
    return bool(np.isfinite(np.asarray(value, dtype=float)).all())


@needs_fmnist
def test_report_has_every_section_per_layer_and_head(report, mae_run):
    proc, out, results = report
    assert {"settings", "models", "attention", "diversity", "cka", "maps"} <= set(results)
    assert set(results["settings"]) == {"attention", "diversity", "cka", "maps"}
    assert results["settings"]["attention"]["images"] == 40
    assert list(results["models"]) == ["A", "B"]
    assert results["models"]["A"]["description"].startswith("mae run")
    # B=scratch is a random network in A's architecture, not the config's model.name
    assert results["models"]["B"]["description"] == f"random initialisation in the architecture of {mae_run}"
    for label in ("A", "B"):
        info = results["models"][label]
        assert (info["depth"], info["heads"], info["grid_size"], info["num_prefix_tokens"]) == (3, 3, [4, 4], 1)
        att, div = results["attention"][label], results["diversity"][label]
        assert att["images"] == div["images"] == 40
        for values in (att["distance"], att["entropy"], div["kl"]):
            assert np.asarray(values).shape == (3, 3) and _finite(values)
        assert np.asarray(div["kl_pairwise"]).shape == (3, 3, 3)
        assert np.allclose(np.diagonal(np.asarray(div["kl_pairwise"]), axis1=1, axis2=2), 0, atol=1e-6)
        assert np.allclose(att["distance_layer_mean"], np.asarray(att["distance"]).mean(1))
        # bounds known in advance: 16 patches of 4 px on a 4x4 grid
        max_distance = 4 * math.hypot(3, 3)
        assert (np.asarray(att["distance"]) >= 0).all() and (np.asarray(att["distance"]) <= max_distance).all()
        assert (np.asarray(att["entropy"]) >= 0).all() and (np.asarray(att["entropy"]) <= math.log(16) + 1e-5).all()
        assert (np.asarray(div["kl"]) >= -1e-6).all()


@needs_fmnist
def test_report_cka_matrices(report):
    _, _, results = report
    cka = results["cka"]
    assert cka["images"] == 40 and cka["minibatches"] == 3  # 16 + 16 + 8
    for label in ("A", "B"):
        within = np.asarray(cka["within"][label])
        assert within.shape == (3, 3) and _finite(within)
        assert np.allclose(np.diag(within), 1.0, atol=1e-6) and np.allclose(within, within.T, atol=1e-6)
    between = np.asarray(cka["between"]["A vs B"])
    assert list(cka["between"]) == ["A vs B"] and between.shape == (3, 3) and _finite(between)


@needs_fmnist
def test_report_attention_maps(report):
    _, _, results = report
    maps = results["maps"]
    assert maps["queries"] == [[0.5, 0.5], [0.2, 0.2]] and len(maps["image_ids"]) == 4
    for label in ("A", "B"):
        assert maps[label]["query_patches"] == [[2, 2], [0, 0]]  # of the 4x4 grid
        rows = np.asarray(maps[label]["rows"])
        assert rows.shape == (3, 4, 2, 16) and _finite(rows)  # (layers, images, queries, patches)
        assert (rows >= 0).all() and (rows.sum(-1) <= 1 + 1e-5).all()


@needs_fmnist
def test_report_writes_figures_and_a_self_contained_page(report):
    proc, out, _ = report
    for name in (
        "attention_distance.png",
        "attention_distance_fraction.png",
        "head_diversity.png",
        "head_diversity_js.png",
        "attention_entropy.png",
        "cka_within.png",
        "cka_between.png",
        "attention_maps_q0.png",
        "attention_maps_q1.png",
    ):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (out / "report.html").read_text()
    assert str(out / "report.html") in proc.stdout
    assert page.count('src="data:image/png;base64,') == 9
    assert 'src="http' not in page and 'href="http' not in page
    assert not re.search(r'src="(?!data:)', page)  # nothing refers to a file beside the page
    assert "<b>A</b>" in page and "<b>B</b>" in page


@needs_fmnist
def test_separate_analyses_into_one_directory_are_merged(tmp_path, capsys):
    common = ["--model", "R=scratch", "--out", str(tmp_path), *ANALYZE]
    assert main(["analyze", "attention", *common]) == 0
    first = json.loads((tmp_path / "results.json").read_text())
    assert main(["analyze", "cka", *common]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["attention"] == first["attention"]  # kept, not recomputed
    assert "diversity" not in results and "maps" not in results
    assert np.asarray(results["cka"]["within"]["R"]).shape == (3, 3)
    assert set(results["settings"]) == {"attention", "cka"}
    assert list(results["models"]) == ["R"]
    assert (tmp_path / "attention_distance.png").is_file() and (tmp_path / "cka_within.png").is_file()
    assert not (tmp_path / "cka_between.png").exists()  # one model: nothing to compare


@needs_fmnist
def test_exported_encoder_is_analysed_like_its_run(mae_run, tmp_path, capsys):
    export = tmp_path / "enc.safetensors"
    assert main(["export", str(mae_run), "--out", str(export)]) == 0
    assert (
        main(
            [
                "analyze",
                "attention",
                "--model",
                f"run={mae_run}",
                "--model",
                str(export),
                "--out",
                str(tmp_path / "an"),
                *ANALYZE,
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "an/results.json").read_text())
    assert results["models"]["enc"]["description"].startswith("exported encoder")
    for key in ("distance", "entropy"):  # the same weights: the same numbers
        np.testing.assert_allclose(results["attention"]["enc"][key], results["attention"]["run"][key], rtol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/run"], "is not a run directory"),
        (["--model", "scratch", "--query", "1.5,0.2"], "--query 1.5,0.2"),
        (["--model", "scratch", "--query", "0.5"], "expected Y,X"),
        (["--model", "scratch", "--batch-size", "2"], "--batch-size 2"),
        (["--model", "x=scratch", "--model", "x=scratch"], "share the name"),
    ],
    ids=["unknown-source", "query-outside", "query-not-a-pair", "batch-too-small", "duplicate-name"],
)
def test_bad_analyze_input_is_a_user_error(tmp_path, capsys, args, message):
    code = main(["analyze", "attention", *args, "--out", str(tmp_path / "out"), *SYNTHETIC])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mimkit: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "out/results.json").exists()


def test_bad_analyze_input_exits_2_without_a_traceback(tmp_path, capsys):
    err = cli_error(
        capsys,
        "analyze",
        "report",
        "--model",
        "A=scratch",
        "--model",
        "A=scratch",
        "--out",
        str(tmp_path),
        *sets(["device=cpu", "data.name=synthetic", "model.name=mim_vit_femto"]),
    )
    assert "share the name ['A']" in err


def test_cka_on_fewer_than_four_images_is_a_user_error(tmp_path, capsys):
    code = main(["analyze", "cka", "--model", "scratch", "--images", "3", "--out", str(tmp_path), *SYNTHETIC])
    assert code == 2 and "4" in capsys.readouterr().err


def test_map_images_below_one_is_a_user_error(tmp_path, capsys):
    code = main(
        [
            "analyze",
            "maps",
            "--model",
            "scratch",
            "--images",
            "8",
            "--map-images",
            "0",
            "--out",
            str(tmp_path),
            *SYNTHETIC,
        ]
    )
    assert code == 2 and "--map-images" in capsys.readouterr().err


def test_timm_model_with_weights_from_a_local_file_is_analysed(tmp_path):
    """`timm:NAME@FILE` loads timm's architecture with the file's weights (what a user with a downloaded
    vit_*.mae checkpoint does); the capture then sees exactly those weights."""
    from safetensors.torch import save_file

    from mimkit.analysis.models import load_model
    from mimkit.config import load_config

    torch.manual_seed(3)
    reference = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=16
    ).eval()
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    base = load_config(None, ["device=cpu", "data.name=synthetic", "data.img_size=32", "data.in_chans=3"])
    model = load_model(f"t=timm:vit_tiny_patch16_224@{weights}", base, torch.device("cpu"))
    assert model.label == "t" and model.geometry.grid_size == (2, 2) and model.geometry.heads == 3
    x = torch.randn(2, 3, 32, 32)
    for got, want in zip(capture_attention(model.encoder, x), capture_attention(reference, x)):
        torch.testing.assert_close(got, want)
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(f"timm:vit_tiny_patch16_224@{tmp_path / 'missing.pth'}", base, torch.device("cpu"))


def test_timm_source_accepts_a_pretrained_tag_and_rejects_a_file_of_other_weights(tmp_path):
    """`timm:NAME.TAG@FILE` builds NAME; a file whose keys are not that model's is an error, never a silently
    random network (timm loads non-strictly once the classifier is dropped)."""
    from safetensors.torch import save_file

    from mimkit.analysis.models import load_model
    from mimkit.config import load_config

    torch.manual_seed(5)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32).eval()
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(good))
    save_file({f"encoder.{k}": v.contiguous() for k, v in reference.state_dict().items()}, str(bad))
    base = load_config(None, ["device=cpu", "data.name=synthetic", "data.img_size=32", "data.in_chans=3"])
    model = load_model(f"timm:vit_tiny_patch16_224.augreg_in21k@{good}", base, torch.device("cpu"))
    assert model.cfg.model.name == "vit_tiny_patch16_224"
    torch.testing.assert_close(model.encoder.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
    with pytest.raises(ConfigError, match="does not hold weights"):
        load_model(f"timm:vit_tiny_patch16_224@{bad}", base, torch.device("cpu"))


def test_attention_map_grid_heads_every_column(tmp_path, monkeypatch):
    """The top row names every column (image, layer 1..L), also when the first model is shallower than another:
    the report's grid once had no headers over the deeper model's last layers."""
    from mimkit.analysis.plots import plot_attention_maps

    grid = (4, 4)

    def model(depth):
        rows = np.full((depth, 1, 1, 16), 1 / 16)  # (layers, images, queries, patches)
        return {"rows": rows.tolist(), "grid_size": list(grid), "query_patches": [[1, 2]]}

    maps = {"queries": [[0.5, 0.5]], "image_ids": [0], "shallow": model(2), "deep": model(4)}
    import mimkit.analysis.plots as plots

    made, original = {}, plots.plt.subplots

    def spy(*args, **kwargs):
        fig, axes = original(*args, **kwargs)
        made["axes"] = axes
        return fig, axes

    monkeypatch.setattr(plots.plt, "subplots", spy)
    (path,) = plot_attention_maps(maps, np.zeros((1, 16, 16)), tmp_path)
    top = made["axes"][0]
    assert [ax.get_title() for ax in top] == ["image", "layer 1", "layer 2", "layer 3", "layer 4"]
    assert not top[3].axison and top[3].title.get_visible()  # an empty cell of the shallow model keeps its header
    assert path.is_file()
