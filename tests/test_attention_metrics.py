"""Attention metrics without artifacts (issue 19, item 5): exact KL from the logits, Jensen-Shannon divergence,
foreground-only queries and keys, distance as a fraction of the image side, and the before/after fine-tuning
pairing of `mimkit analyze`. Each is checked against a brute-force loop or a hand-built case."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import TINY, run_cli, sets
from mimkit.analysis.foreground import foreground_patches
from mimkit.analysis.metrics import (
    attention_distance,
    attention_entropy,
    image_side,
    pairwise_head_js,
    pairwise_head_kl,
    patch_distances,
)
from mimkit.analysis.pairs import find_pairs, pair_changes
from mimkit.analysis.stats import AttentionStats, ViTGeometry
from mimkit.config import ConfigError

GRID, PATCH, PREFIX = (3, 3), (4, 4), 1


def _logits(seed: int = 0, batch: int = 2, heads: int = 3, peaked: float = 60.0) -> torch.Tensor:
    """(batch, heads, 1 + 9, 1 + 9) logits; head 0 is peaked enough that float32 softmax underflows to 0."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, heads, 10, 10, generator=gen, dtype=torch.float64)
    logits[:, 0] *= peaked
    return logits


def _brute_divergence(log_p: np.ndarray, kind: str, keep: np.ndarray | None = None) -> np.ndarray:
    """(heads, heads) KL or JS between heads by explicit loops in float64 over patch rows and keys (prefix
    dropped, rows renormalised over the kept keys), averaged over kept queries and images."""
    batch, heads, tokens, _ = log_p.shape
    patches = list(range(PREFIX, tokens))
    out = np.zeros((heads, heads))
    count = 0
    for b in range(batch):
        kept = [j for j in patches if keep is None or keep[b, j - PREFIX]]
        for i in kept:
            count += 1
            rows = []
            for h in range(heads):
                logits = np.array([log_p[b, h, i, j] for j in kept])
                rows.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
            for h in range(heads):
                for g in range(heads):
                    p, q = rows[h], rows[g]
                    if kind == "kl":
                        out[h, g] += sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q) if pk > 0)
                    else:
                        m = (p + q) / 2
                        kl_pm = sum(pk * math.log(pk / mk) for pk, mk in zip(p, m) if pk > 0)
                        kl_qm = sum(qk * math.log(qk / mk) for qk, mk in zip(q, m) if qk > 0)
                        out[h, g] += 0.5 * (kl_pm + kl_qm)
    return out / count


def test_kl_from_the_logits_is_exact_where_probabilities_underflow():
    logits = _logits()
    log_attn = logits.float().log_softmax(-1)
    attn = logits.float().softmax(-1)
    assert (attn[:, 0] == 0).any()  # the peaked head underflows in float32
    exact = pairwise_head_kl(attn, PREFIX, log_attn=log_attn)
    brute = _brute_divergence(logits.log_softmax(-1).numpy(), "kl")
    np.testing.assert_allclose(exact.numpy(), brute, rtol=1e-3, atol=1e-3)
    clamped = pairwise_head_kl(attn, PREFIX)  # from probabilities: log clamped at -87
    assert float((clamped - exact)[1:, 0].abs().max()) > 1.0  # the clamp's artifact, gone with the logits


def test_js_matches_a_brute_force_loop_and_is_bounded():
    logits = _logits(1)
    log_attn = logits.float().log_softmax(-1)
    js = pairwise_head_js(log_attn.exp(), PREFIX, log_attn=log_attn)
    brute = _brute_divergence(logits.log_softmax(-1).numpy(), "js")
    np.testing.assert_allclose(js.numpy(), brute, rtol=1e-4, atol=1e-5)
    assert float(js.max()) <= math.log(2) + 1e-6 and float(js.min()) >= -1e-6
    torch.testing.assert_close(js, js.T, rtol=1e-5, atol=1e-6)  # symmetric
    from_probs = pairwise_head_js(log_attn.exp(), PREFIX)  # JS needs no clamp: probabilities give the same
    torch.testing.assert_close(from_probs, js, rtol=1e-4, atol=1e-5)


def test_foreground_mask_restricts_queries_and_keys():
    logits = _logits(2, peaked=3.0)
    attn = logits.float().softmax(-1)
    log_attn = logits.float().log_softmax(-1)
    keep = torch.tensor([[1, 1, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 1, 1]], dtype=torch.bool)
    kl = pairwise_head_kl(attn, PREFIX, patch_mask=keep, log_attn=log_attn)
    np.testing.assert_allclose(kl.numpy(), _brute_divergence(logits.numpy(), "kl", keep.numpy()), rtol=1e-4, atol=1e-5)
    js = pairwise_head_js(attn, PREFIX, patch_mask=keep)
    np.testing.assert_allclose(js.numpy(), _brute_divergence(logits.numpy(), "js", keep.numpy()), rtol=1e-4, atol=1e-5)
    # distance and entropy: the kept patches only, each row renormalised over them, mean over kept queries
    dist = patch_distances(GRID, PATCH).double()
    exp_d, exp_h, n = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for b in range(2):
        idx = keep[b].nonzero().flatten()
        for i in idx:
            n += 1
            row = attn[b, :, PREFIX + i, PREFIX + idx].double()
            row = row / row.sum(-1, keepdim=True)
            exp_d += (row * dist[i, idx]).sum(-1)
            exp_h += -(row * row.log()).sum(-1)
    got_d = attention_distance(attn, GRID, PATCH, PREFIX, patch_mask=keep)
    got_h = attention_entropy(attn, PREFIX, patch_mask=keep)
    torch.testing.assert_close(got_d.double(), exp_d / n, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_h.double(), exp_h / n, rtol=1e-5, atol=1e-5)


def test_a_background_sink_drops_out_with_the_foreground_mask():
    """Every query spends most of its attention on one far background patch: the distance over all patches is
    the sink's, over the foreground it is the foreground's own."""
    attn = torch.zeros(1, 1, 10, 10)
    attn[..., PREFIX + 8] = 0.9  # the sink: the bottom-right patch
    attn[..., PREFIX + 0] += 0.1  # the rest on the top-left patch
    keep = torch.zeros(1, 9, dtype=torch.bool)
    keep[0, [0, 1]] = True  # the two top-left patches are the foreground; the sink is not
    everywhere = float(attention_distance(attn, GRID, PATCH, PREFIX))
    foreground = float(attention_distance(attn, GRID, PATCH, PREFIX, patch_mask=keep))
    assert everywhere > 4.0  # dominated by the sink, 8 * sqrt(2) px away from the top-left
    assert foreground == pytest.approx((0.0 + 4.0) / 2)  # each kept query attends only to patch 0 once renormalised


def test_foreground_patches_find_an_item_on_a_plain_background():
    images = torch.zeros(2, 1, 12, 12, dtype=torch.uint8)
    images[0, :, 4:8, 0:4] = 200  # patch (1, 0) of a 3x3 grid of 4 px patches
    images[1] = 90  # a gray background ...
    images[1, :, 0:4, 8:12] = 250  # ... with an item at patch (0, 2)
    images[1, :, 9, 9] = 100  # a faint pixel: below the threshold
    mask = foreground_patches(images, 12, 4, threshold=0.1)
    assert mask[0].nonzero().flatten().tolist() == [3]
    assert mask[1].nonzero().flatten().tolist() == [2]


def test_stats_report_distance_as_a_fraction_of_the_image_side():
    geometry = ViTGeometry(depth=1, heads=3, grid_size=GRID, patch_size=PATCH, num_prefix_tokens=PREFIX)
    stats = AttentionStats(geometry, ("distance", "kl", "js"))
    logits = _logits(3, peaked=2.0).float()
    stats.update(0, logits.softmax(-1), logits.log_softmax(-1))
    summary = stats.summary()
    assert image_side(GRID, PATCH) == 12.0
    np.testing.assert_allclose(np.asarray(summary["distance_fraction"]), np.asarray(summary["distance"]) / 12.0)
    assert np.asarray(summary["js_pairwise"]).shape == (1, 3, 3) and summary["queries"] == 2 * 9


def test_pairs_are_found_from_the_finetuned_runs_init(tmp_path):
    pre = tmp_path / "pre"
    ft = tmp_path / "ft"
    tiny = [*TINY, "train.steps=2"]
    run_cli("pretrain", "--config", "mae_fmnist_tiny", "--out", str(pre), *sets(tiny), check=True)
    run_cli("finetune", "--init", str(pre), "--out", str(ft), *sets([*tiny, "train.epochs=null"]), check=True)
    assert find_pairs({"pre": str(pre), "ft": str(ft), "rand": "scratch"}) == [("pre", "ft")]
    assert find_pairs({"a": "scratch", "b": "scratch"}, ["b,a"]) == [("b", "a")]
    with pytest.raises(ConfigError, match="no --model named c"):
        find_pairs({"a": "scratch"}, ["a,c"])
    with pytest.raises(ConfigError, match="PRE,FT"):
        find_pairs({"a": "scratch"}, ["a"])
    out = tmp_path / "analysis"
    run_cli(
        "analyze",
        "report",
        "--model",
        f"pre={pre}",
        "--model",
        f"ft={ft}",
        "--foreground",
        "--images",
        "16",
        "--batch-size",
        "8",
        "--out",
        str(out),
        *sets(["device=cpu", "data.name=synthetic", "data.img_size=16", "data.in_chans=1"]),
        check=True,
    )
    results = json.loads((out / "results.json").read_text())
    (pair,) = results["pairs"]
    assert (pair["pretrained"], pair["finetuned"]) == ("pre", "ft")
    before = results["attention"]["pre"]["distance_layer_mean"]
    after = results["attention"]["ft"]["distance_layer_mean"]
    np.testing.assert_allclose(pair["metrics"]["distance"]["change"], np.subtract(after, before), atol=1e-12)
    assert len(pair["cka_same_layer"]) == 3
    assert set(results["attention_foreground"]) == {"pre", "ft"} and "js" in results["diversity_foreground"]["ft"]
    assert 0 < results["attention_foreground"]["pre"]["patches_kept"] <= 1
    assert results["settings"]["diversity"]["head_divergence"] == "KL and JS from log-softmax of the logits (exact)"
    for figure in ("finetune_change.png", "head_diversity_js.png", "attention_distance_foreground.png"):
        assert (out / figure).is_file()
    assert "Before and after fine-tuning" in (out / "report.html").read_text()
    again = pair_changes(results, [("pre", "ft")])
    assert again[0]["metrics"]["js"]["before"] == results["diversity"]["pre"]["js_layer_mean"]


def test_unfused_capture_keeps_its_clamped_kl_and_agrees_with_recompute_on_a_soft_model(tmp_path):
    from conftest import tiny_config
    from mimkit.analysis.run import AnalysisOptions, run_analysis

    results = {}
    for mode in ("recompute", "unfused"):
        options = AnalysisOptions(images=8, batch_size=4, capture=mode)
        results[mode] = run_analysis(tiny_config(), ["a=scratch"], {"diversity"}, tmp_path / mode, options, _quiet)
    exact, clamped = results["recompute"]["diversity"]["a"], results["unfused"]["diversity"]["a"]
    assert np.isfinite(clamped["kl"]).all()  # never inf, even where a probability underflows
    np.testing.assert_allclose(clamped["kl"], exact["kl"], rtol=1e-4, atol=1e-6)  # a random model is not peaked
    np.testing.assert_allclose(clamped["js"], exact["js"], rtol=1e-4, atol=1e-6)
    assert "clamped" in results["unfused"]["settings"]["diversity"]["head_divergence"]
    assert "exact" in results["recompute"]["settings"]["diversity"]["head_divergence"]


def _quiet(*_):
    pass
