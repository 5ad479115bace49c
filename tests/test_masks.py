"""Mask generators: exact masked counts, keyed determinism, SimMIM cell structure, block-wise contiguity, noise."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from mimkit.data.masks import MaskGenerator, blockwise_mask, mask_from_noise

KEYS = torch.arange(64, dtype=torch.int64) * 7919 + 13


def _components(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected components of True cells in a 2-D bool array."""
    g0, g1 = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    sizes = []
    for i in range(g0):
        for j in range(g1):
            if mask[i, j] and not seen[i, j]:
                stack, seen[i, j], n = [(i, j)], True, 0
                while stack:
                    a, b = stack.pop()
                    n += 1
                    for c, d in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                        if 0 <= c < g0 and 0 <= d < g1 and mask[c, d] and not seen[c, d]:
                            seen[c, d] = True
                            stack.append((c, d))
                sizes.append(n)
    return sizes


def test_components_helper():
    m = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=bool)
    assert sorted(_components(m)) == [1, 1, 2]


# ---------------------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize(
    "img, patch, ratio, expected",
    [
        (32, 4, 0.75, 48),  # 64 tokens, keep int(16) = 16
        (224, 16, 0.75, 147),  # 196 tokens, keep 49
        (32, 4, 0.6, 39),  # keep int(25.6) = 25
        (28, 4, 0.5, 25),  # 49 tokens, keep int(24.5) = 24
        (64, 8, 0.9, 58),  # keep int(6.4) = 6
    ],
)
def test_random_masked_count_is_mae_len_keep_rule(img, patch, ratio, expected):
    gen = MaskGenerator("random", img, patch, ratio, patch)
    L = (img // patch) ** 2
    assert gen.num_tokens == L
    assert gen.num_masked == expected == L - int(L * (1 - ratio))
    masks = gen(KEYS, 0)
    assert masks.dtype == torch.bool and masks.shape == (len(KEYS), L)
    assert masks.sum(1).tolist() == [expected] * len(KEYS)


@pytest.mark.parametrize(
    "img, patch, ratio, mask_patch, cells_masked",
    [
        (192, 16, 0.6, 32, 22),  # 6x6 cells: ceil(21.6) = 22
        (224, 16, 0.6, 32, 30),  # 7x7 cells: ceil(29.4) = 30
        (32, 4, 0.6, 8, 10),  # 4x4 cells: ceil(9.6) = 10
        (32, 4, 0.5, 4, 32),  # cell = patch: 64 cells
        (32, 4, 0.3, 16, 2),  # 2x2 cells: ceil(1.2) = 2
    ],
)
def test_simmim_masked_count(img, patch, ratio, mask_patch, cells_masked):
    gen = MaskGenerator("simmim", img, patch, ratio, mask_patch)
    cells = (img // mask_patch) ** 2
    scale = mask_patch // patch
    assert gen.num_cells_masked == cells_masked == math.ceil(cells * ratio)
    assert gen.num_masked == cells_masked * scale**2
    masks = gen(KEYS, 3)
    assert masks.shape == (len(KEYS), (img // patch) ** 2)
    assert masks.sum(1).tolist() == [cells_masked * scale**2] * len(KEYS)


def test_simmim_192px_example_22_of_36_cells():
    gen = MaskGenerator("simmim", 192, 16, 0.6, 32)
    assert gen.grid == 12 and gen.cell_grid == 6 and gen.cell_scale == 2
    masks = gen(KEYS, 0).view(-1, 6, 2, 6, 2)
    cells = masks[:, :, 0, :, 0]
    assert cells.flatten(1).sum(1).tolist() == [22] * len(KEYS)
    assert gen.num_masked == 88


@pytest.mark.parametrize(
    "img, patch, ratio", [(224, 16, 0.4), (224, 16, 0.75), (32, 4, 0.5), (32, 4, 0.3), (64, 4, 0.6)]
)
def test_blockwise_masked_count(img, patch, ratio):
    gen = MaskGenerator("blockwise", img, patch, ratio, patch)
    L = (img // patch) ** 2
    assert gen.num_masked == round(L * ratio)
    masks = gen(KEYS, 0)
    assert masks.dtype == torch.bool and masks.shape == (len(KEYS), L)
    assert masks.sum(1).tolist() == [round(L * ratio)] * len(KEYS)


@pytest.mark.parametrize("num_masked", [1, 2, 3, 5, 40, 100, 150, 190, 195])
def test_blockwise_mask_function_exact_count(num_masked):
    for s in range(20):
        m = blockwise_mask(14, num_masked, random.Random(s))
        assert m.shape == (14, 14) and m.dtype == bool
        assert int(m.sum()) == num_masked


# ---------------------------------------------------------------------------------------------------- keyed determinism
@pytest.mark.parametrize(
    "kind, img, patch, ratio, mps",
    [("random", 32, 4, 0.75, 4), ("simmim", 192, 16, 0.6, 32), ("blockwise", 224, 16, 0.4, 16)],
)
def test_deterministic_and_key_dependent(kind, img, patch, ratio, mps):
    gen = MaskGenerator(kind, img, patch, ratio, mps)
    a = gen(KEYS, 5)
    b = MaskGenerator(kind, img, patch, ratio, mps)(KEYS.clone(), 5)
    assert torch.equal(a, b)
    # different keys -> different masks (all rows distinct)
    assert len({tuple(r.tolist()) for r in a}) == len(KEYS)
    shifted = gen(KEYS + 1, 5)
    assert (shifted != a).any(dim=1).float().mean() > 0.9
    # a different seed changes the masks of the same keys
    other = gen(KEYS, 6)
    assert (other != a).any(dim=1).float().mean() > 0.9


@pytest.mark.parametrize("kind, mps", [("random", 4), ("simmim", 8), ("blockwise", 4)])
def test_mask_of_a_sample_does_not_depend_on_the_batch(kind, mps):
    gen = MaskGenerator(kind, 32, 4, 0.6, mps)
    full = gen(KEYS, 1)
    for i in (0, 17, 63):
        alone = gen(KEYS[i : i + 1], 1)
        assert torch.equal(alone[0], full[i])
    reversed_batch = gen(KEYS.flip(0), 1)
    assert torch.equal(reversed_batch.flip(0), full)


def test_random_masks_cover_positions_uniformly():
    gen = MaskGenerator("random", 32, 4, 0.75, 4)
    masks = gen(torch.arange(4000), 0).float()
    freq = masks.mean(0)
    assert freq.mean().item() == pytest.approx(0.75)
    assert freq.min().item() > 0.70 and freq.max().item() < 0.80  # no position is favoured


def test_simmim_cells_cover_positions_uniformly():
    gen = MaskGenerator("simmim", 32, 4, 0.6, 8)
    masks = gen(torch.arange(4000), 0).view(-1, 4, 2, 4, 2)[:, :, 0, :, 0].float()
    freq = masks.mean(0)
    assert freq.min().item() > 0.55 and freq.max().item() < 0.70  # 10/16 = 0.625 on average


# ---------------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("img, patch, mps", [(192, 16, 32), (32, 4, 8), (32, 4, 16), (224, 16, 112)])
def test_simmim_masks_constant_inside_each_cell(img, patch, mps):
    gen = MaskGenerator("simmim", img, patch, 0.6, mps)
    s, cg = mps // patch, img // mps
    masks = gen(KEYS, 0).view(-1, cg, s, cg, s)
    first = masks[:, :, :1, :, :1]
    assert torch.equal(masks, first.expand_as(masks))
    # and the masked region is not trivially all-or-nothing
    assert (masks.flatten(1).any(1)).all() and (~masks.flatten(1)).any(1).all()


def test_random_masks_are_not_cell_structured():
    """Sanity check for the test above: it does fail on masks that are not cell-constant."""
    masks = MaskGenerator("random", 32, 4, 0.6, 4)(KEYS, 0).view(-1, 4, 2, 4, 2)
    assert not torch.equal(masks, masks[:, :, :1, :, :1].expand_as(masks))


def test_blockwise_masks_form_contiguous_blocks():
    img, patch, ratio = 224, 16, 0.4  # BEiT's setting: 14x14 tokens, 40% masked
    g = img // patch
    block = MaskGenerator("blockwise", img, patch, ratio, patch)(KEYS, 0)
    rand = MaskGenerator("random", img, patch, ratio, patch)(KEYS, 0)
    block_comps = [_components(m.view(g, g).numpy()) for m in block]
    rand_comps = [_components(m.view(g, g).numpy()) for m in rand]
    assert all(max(c) >= 4 for c in block_comps)  # every sample has a real block
    # blocks merge into few large regions; scattered random tokens form many small ones
    assert np.mean([len(c) for c in block_comps]) * 4 < np.mean([len(c) for c in rand_comps])
    assert np.mean([max(c) for c in block_comps]) > 2 * np.mean([max(c) for c in rand_comps])


def test_blockwise_small_grid_has_blocks():
    g = 8
    masks = MaskGenerator("blockwise", 32, 4, 0.5, 4)(KEYS, 0)
    assert all(max(_components(m.view(g, g).numpy())) > 1 for m in masks)


# ---------------------------------------------------------------------------------------------------- noise
@pytest.mark.parametrize(
    "kind, img, patch, ratio, mps",
    [
        ("random", 32, 4, 0.75, 4),
        ("random", 224, 16, 0.75, 16),
        ("simmim", 192, 16, 0.6, 32),
        ("simmim", 32, 4, 0.6, 8),
        ("blockwise", 224, 16, 0.4, 16),
        ("blockwise", 32, 4, 0.5, 4),
    ],
)
def test_noise_argsort_keeps_exactly_the_unmasked_tokens(kind, img, patch, ratio, mps):
    gen = MaskGenerator(kind, img, patch, ratio, mps)
    noise = gen.noise(KEYS, 2)
    mask = gen(KEYS, 2)
    assert noise.shape == mask.shape and noise.dtype == torch.float32
    assert torch.equal(mask_from_noise(noise, gen.num_masked), mask)
    # MAE's encoder keeps ids_shuffle[:, :len_keep]: exactly the unmasked tokens
    keep = torch.argsort(noise, dim=1)[:, : gen.num_tokens - gen.num_masked]
    assert (~mask.gather(1, keep)).all()
    if kind != "random":
        assert (noise[mask] >= 1).all() and (noise[~mask] < 1).all()


def test_noise_is_deterministic():
    gen = MaskGenerator("simmim", 32, 4, 0.6, 8)
    assert torch.equal(gen.noise(KEYS, 0), gen.noise(KEYS, 0))
    assert not torch.equal(gen.noise(KEYS, 0), gen.noise(KEYS, 1))


def test_mask_from_noise_by_hand():
    noise = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.8, 0.2, 0.4, 0.6]])
    assert mask_from_noise(noise, 2).tolist() == [[False, True, True, False], [True, False, False, True]]
    assert mask_from_noise(noise, 1).tolist() == [[False, True, False, False], [True, False, False, False]]


# ---------------------------------------------------------------------------------------------------- invalid
@pytest.mark.parametrize("kind", ["random", "simmim", "blockwise"])
@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_invalid_ratio_raises(kind, ratio):
    with pytest.raises(ValueError, match="ratio"):
        MaskGenerator(kind, 32, 4, ratio, 8)


@pytest.mark.parametrize("img, patch, mps", [(32, 4, 6), (32, 4, 12), (32, 4, 64), (224, 16, 24), (192, 16, 8)])
def test_invalid_mask_patch_size_raises(img, patch, mps):
    with pytest.raises(ValueError, match="mask patch size"):
        MaskGenerator("simmim", img, patch, 0.6, mps)


@pytest.mark.parametrize(
    "kind, ratio, mps",
    [
        ("random", 0.99, 4),  # 64 tokens: keep int(0.64) = 0
        ("simmim", 0.99, 8),  # 16 cells: ceil(15.84) = 16 = everything
        ("simmim", 0.9, 16),  # 4 cells: ceil(3.6) = 4
        ("blockwise", 0.005, 4),  # round(0.32) = 0 masked
        ("blockwise", 0.995, 4),  # round(63.68) = 64
    ],
)
def test_ratio_masking_all_or_nothing_raises(kind, ratio, mps):
    with pytest.raises(ValueError, match="at least one"):
        MaskGenerator(kind, 32, 4, ratio, mps)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown mask type"):
        MaskGenerator("checkerboard", 32, 4, 0.5, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind, mps", [("random", 4), ("simmim", 8), ("blockwise", 4)])
def test_masks_same_on_gpu(kind, mps):
    gen = MaskGenerator(kind, 32, 4, 0.6, mps)
    gpu = gen(KEYS.cuda(), 0)
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.cpu(), gen(KEYS, 0))
