"""Baselines that learn nothing (issue 19, item 2): raw-pixel kNN and linear probe, the trivial predictors, the
frozen random encoder in the compared models' architecture, and how `compare` shows them with seed spreads."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, run_cli, sets, tiny_config
from mimkit.config import ConfigError, resolved
from mimkit.data.datasets import build_data
from mimkit.data.imageset import ImageSet
from mimkit.eval.baselines import majority_class, pixel_features, trivial_predictions, trivial_scores
from mimkit.eval.compare import markdown_table, summarize
from mimkit.eval.task_metrics import box_iou
from mimkit.weights import resolve_source
from mimkit.weights.sources import scratch_in_shared_architecture

PROBE = ["probe.epochs=3", "probe.warmup_epochs=1", "probe.batch_size=32", "probe.knn_k=5"]


def _quiet(*_):
    pass


def _pretrain(out, *extra):
    run_cli(
        "pretrain",
        "--config",
        "mae_fmnist_tiny",
        "--out",
        str(out),
        *sets([*TINY, "train.steps=2", *extra]),
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def mae64(tmp_path_factory):
    """A 64-wide, 4-head MAE run: an architecture no recipe default has."""
    return _pretrain(tmp_path_factory.mktemp("src") / "mae64", "model.embed_dim=64", "model.num_heads=4")


def test_pixel_features_are_the_normalised_input_flattened():
    cfg = resolved(tiny_config("data.img_size=8", "data.mean=[0.25]", "data.std=[0.5]"))
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    feats = pixel_features(ImageSet(images, None, torch.arange(5)), cfg, batch_size=2)
    expected = ((images.float() / 255 - 0.25) / 0.5).reshape(5, 64)
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)


def test_pixel_knn_matches_a_written_out_vote(tmp_path):
    from mimkit.eval.knn import knn_eval

    cfg = tiny_config("init=pixels", *PROBE, "probe.knn_temperature=0.1")
    res = knn_eval(cfg, tmp_path / "knn")
    data = build_data(resolved(cfg), _quiet)
    train = pixel_features(data.train, resolved(cfg))
    held = pixel_features(data.heldout, resolved(cfg))
    correct = 0
    for q, label in zip(held, data.heldout.labels):  # one query at a time, every similarity by hand
        sims = torch.tensor([float(q @ t / (q.norm() * t.norm())) for t in train])
        top = sims.argsort(descending=True)[:5]
        votes = torch.zeros(10)
        for i in top:
            votes[data.train.labels[i]] += float(torch.exp(sims[i] / 0.1))
        correct += int(votes.argmax() == label)
    assert res["top1"] == pytest.approx(100 * correct / len(held))
    assert res["init"] == "raw pixels (no encoder)" and res["heldout_images"] == len(held)


def test_pixel_linprobe_is_the_probe_protocol_on_pixels(tmp_path):
    from mimkit.eval.linprobe import linprobe, train_head

    cfg = tiny_config("init=pixels", *PROBE)
    res = linprobe(cfg, tmp_path / "lin")
    rcfg = resolved(cfg)
    data = build_data(rcfg, _quiet)
    _, history = train_head(
        pixel_features(data.train, rcfg),
        data.train.labels,
        pixel_features(data.heldout, rcfg),
        data.heldout.labels,
        10,
        rcfg,
    )
    assert res["top1"] == pytest.approx(history[-1]["top1"])


def test_trivial_predictors_are_the_constants_written_out():
    labels = torch.tensor([3, 1, 3, 2, 3, 1])
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.3, 0.1, 0.9, 0.7], [0.0, 0.0, 0.4, 0.4]])
    angles = torch.tensor([[-40.0], [10.0], [25.0], [80.0], [5.0]])
    assert majority_class(labels) == 3
    assert majority_class(torch.tensor([2, 1, 1, 2])) == 1  # a tie goes to the smaller label
    loc = trivial_predictions("localization", ImageSet(torch.zeros(3, 1, 4, 4), None, torch.arange(3), boxes), 2)
    torch.testing.assert_close(loc["boxes"], torch.tensor([[0.4 / 3, 0.1, 1.8 / 3, 1.7 / 3]] * 2))
    rot = trivial_predictions("rotation", ImageSet(torch.zeros(5, 1, 4, 4), None, torch.arange(5), angles), 3)
    assert rot["angles"].flatten().tolist() == [10.0, 10.0, 10.0]
    cls = trivial_predictions("classification", ImageSet(torch.zeros(6, 1, 4, 4), labels, torch.arange(6)), 4, 5)
    assert cls["logits"].shape == (4, 5) and cls["logits"].argmax(1).tolist() == [3] * 4


def test_trivial_scores_match_the_metrics_and_the_median_is_the_best_constant():
    gen = torch.Generator().manual_seed(0)
    train = ImageSet(torch.zeros(50, 1, 4, 4), None, torch.arange(50), torch.rand(50, 1, generator=gen) * 180 - 90)
    held = ImageSet(torch.zeros(40, 1, 4, 4), None, torch.arange(40), torch.rand(40, 1, generator=gen) * 180 - 90)
    error = trivial_scores("rotation", train, held)["angle_error"]
    median = float(train.targets.median())
    assert error == pytest.approx(float((held.targets - median).abs().mean()), rel=1e-6)
    for shift in (-5.0, 5.0):  # on the training targets no other constant does better
        assert (train.targets - median).abs().mean() <= (train.targets - median - shift).abs().mean()
    xy = torch.rand(60, 2, generator=gen) * 0.5
    box = torch.cat([xy, xy + 0.2 + torch.rand(60, 2, generator=gen) * 0.3], 1)
    labels = torch.randint(0, 4, (60,), generator=gen)
    train = ImageSet(torch.zeros(40, 1, 4, 4), labels[:40], torch.arange(40), box[:40])
    held = ImageSet(torch.zeros(20, 1, 4, 4), labels[40:], torch.arange(20), box[40:])
    loc = trivial_scores("localization", train, held)
    mean_box = box[:40].mean(0, keepdim=True).expand(20, 4)
    assert loc["mean_iou"] == pytest.approx(float(box_iou(mean_box, box[40:]).mean()), rel=1e-6)
    combined = trivial_scores("combined", train, held)
    right = (labels[40:] == majority_class(labels[:40])) & (box_iou(mean_box, box[40:]) >= 0.5)
    # every detection has the same confidence: one threshold, AP = precision x recall at it
    assert combined["ap50"] == pytest.approx(float(right.float().mean()) ** 2, abs=1e-6)
    assert combined["top1"] == pytest.approx(100 * float((labels[40:] == majority_class(labels[:40])).float().mean()))


def test_scratch_takes_the_architecture_of_the_models_it_is_compared_with(tmp_path, mae64):
    run = mae64
    cfg = tiny_config()
    assert scratch_in_shared_architecture([str(run), "scratch"], cfg, False, "compare") == [
        str(run),
        f"scratch:{run}",
    ]
    source = resolve_source(f"scratch:{run}", cfg)
    assert source.kind == "scratch" and source.state is None
    assert source.arch["embed_dim"] == 64 and source.arch["num_heads"] == 4 and source.data["img_size"] == 16
    with pytest.raises(ConfigError, match="does not say which architecture"):
        scratch_in_shared_architecture(["scratch"], cfg, False, "compare")
    assert scratch_in_shared_architecture(["scratch"], cfg, True, "compare") == ["scratch"]
    with pytest.raises(ConfigError, match="differ in architecture"):
        scratch_in_shared_architecture([str(run), str(_pretrain(tmp_path / "femto")), "scratch"], cfg, False, "x")
    with pytest.raises(ConfigError, match="raw-pixel baseline"):
        resolve_source("pixels", cfg)


def test_the_random_baseline_is_a_frozen_encoder_of_that_architecture(tmp_path, mae64):
    from mimkit.eval.probe_common import probe_setup

    run = mae64
    setup = probe_setup(tiny_config(f"init=scratch:{run}", *PROBE), tmp_path / "probe", _quiet)
    assert setup.train_features.shape[1] == 64 and setup.source.state is None
    again = probe_setup(tiny_config(f"init=scratch:{run}", *PROBE), tmp_path / "probe2", _quiet)
    torch.testing.assert_close(again.train_features, setup.train_features)  # same seed, same random network
    other = probe_setup(tiny_config(f"init=scratch:{run}", *PROBE, "seed=1"), tmp_path / "probe3", _quiet)
    assert not torch.allclose(other.heldout_features, setup.heldout_features)


def _row(model, protocol, value, seed=0, baseline=False, task="classification", metric="top1"):
    return dict(
        model=model, protocol=protocol, task=task, metric=metric, value=value, seed=seed, baseline=baseline, source=""
    )


def test_tables_show_seed_spreads_and_mark_models_below_a_baseline():
    rows = [
        _row("mae", "knn", 70.0, 0),
        _row("mae", "knn", 74.0, 1),
        _row("mae", "finetune", 85.0, 0),
        _row("mae", "finetune", 89.0, 1),
        _row("pixels", "knn", 78.0, 0, True),
        _row("pixels", "knn", 78.0, 1, True),
        _row("trivial", "trivial", 10.0, 0, True),
        _row("trivial", "trivial", 10.0, 1, True),
    ]
    knn = next(r for r in summarize(rows) if r["model"] == "mae" and r["protocol"] == "knn")
    assert knn["mean"] == pytest.approx(72.0) and knn["std"] == pytest.approx(2 * 2**0.5) and knn["n"] == 2
    table = markdown_table(rows)
    assert "mean ± std over 2 seeds" in table
    assert "| mae | 72.00 ± 2.83 † | 87.00 ± 2.83 |" in table  # below raw-pixel kNN; fine-tuning beats every bar
    assert "| *pixels* (baseline) | 78.00 ± 0.00 |  |" in table
    assert "| *trivial* (baseline) | 10.00 ± 0.00 | 10.00 ± 0.00 |" in table
    assert "- *pixels*: kNN and the linear probe on the raw pixels" in table
    assert "† not better than a baseline" in table
    rows[0]["value"] = rows[1]["value"] = 80.0
    assert "†" not in markdown_table(rows)
    rows[2]["value"] = rows[3]["value"] = 77.0  # fine-tuning must clear the frozen baselines too
    assert "87.00" not in markdown_table(rows) and "77.00 ± 0.00 †" in markdown_table(rows)


def test_a_model_ahead_of_a_baseline_by_less_than_the_seed_spread_is_not_called_better():
    """Issue 19: a difference smaller than the spread is not a finding. 79 ± 2 over raw-pixel kNN's 78 ± 0.5 is
    marked ≈ (ahead by 1, spread 2); 81 ± 2 is ahead by more than the spread. A one-seed cell is judged by the
    baseline's spread (the protocol's noise): 78.3 over 78 ± 0.5 is ≈, 78.6 is not; two one-seed cells get no mark."""
    pixels = [_row("pixels", "knn", v, s, True) for s, v in enumerate((77.5, 78.0, 78.5))]
    close = [_row("mae", "knn", v, s) for s, v in enumerate((77.0, 79.0, 81.0))]
    table = markdown_table([*close, *pixels])
    assert "| mae | 79.00 ± 2.00 ≈ |" in table and "≈ better than the best baseline" in table and "†" not in table
    clear = [_row("mae", "knn", v, s) for s, v in enumerate((79.0, 81.0, 83.0))]
    table = markdown_table([*clear, *pixels])
    assert "| mae | 81.00 ± 2.00 |" in table and "≈" not in table
    one_seed = markdown_table([_row("mae", "knn", 78.6), _row("pixels", "knn", 78.0, 0, True)])
    assert "| mae | 78.60 |" in one_seed and "≈" not in one_seed  # no spread measured on either side
    assert "| mae | 78.30 ≈ |" in markdown_table([_row("mae", "knn", 78.3), *pixels])  # inside the pixels' 0.5
    assert "| mae | 78.60 |" in markdown_table([_row("mae", "knn", 78.6), *pixels])  # beyond it
    below = markdown_table([*(_row("mae", "knn", v, s) for s, v in enumerate((76.0, 78.0, 80.0))), *pixels])
    assert "78.00 ± 2.00 †" in below and "≈" not in below  # not ahead at all: the stronger mark


def test_a_geometric_comparison_has_no_empty_classification_table():
    """compare --tasks keypoints alone: one table, headed with its seed spread (an empty classification table
    with a blank column was printed before)."""
    rows = [
        _row("mae", "finetune", 0.08, 0, task="keypoints", metric="keypoint_error"),
        _row("mae", "finetune", 0.10, 1, task="keypoints", metric="keypoint_error"),
        _row("trivial", "trivial", 0.21, 0, True, task="keypoints", metric="keypoint_error"),
        _row("trivial", "trivial", 0.21, 1, True, task="keypoints", metric="keypoint_error"),
    ]
    table = markdown_table(rows)
    assert "classification" not in table and "|  |" not in table
    assert table.startswith("# Semantic vs geometric tasks, mean ± std over 2 seeds")
    assert "| mae | 0.0900 ± 0.0141 |" in table


def test_finetune_refuses_the_pixel_baseline(capsys):
    from conftest import cli_error

    message = cli_error(capsys, "finetune", "--init", "pixels", "--out", "/tmp/never", *sets(TINY))
    assert "raw-pixel baseline" in message


def test_compare_adds_the_baselines_and_repeats_cells_per_seed(tmp_path, mae64):
    run = mae64
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--init",
        f"mae={run}",
        "--out",
        str(out),
        "--protocols",
        "knn,linprobe",
        "--tasks",
        "classification,localization",
        "--seeds",
        "2",
        *sets(["data.name=synthetic", "data.synthetic_size=64", "data.img_size=16", "data.in_chans=1"]),
        *[a for s in PROBE for a in ("--set-probe", s)],
        *[
            a
            for s in ["train.epochs=null", "train.steps=2", "train.batch_size=16", "train.eval_samples=16"]
            for a in ("--set-finetune", s)
        ],
    ]
    run_cli(*args, check=True)
    rows = json.loads((out / "results.json").read_text())
    cells = {(r["model"], r["protocol"], r["task"], r["seed"]) for r in rows}
    per_seed = {
        ("mae", "knn", "classification"),
        ("mae", "linprobe", "classification"),
        ("mae", "linprobe", "localization"),
        ("pixels", "knn", "classification"),
        ("pixels", "linprobe", "classification"),
        ("random", "knn", "classification"),
        ("random", "linprobe", "classification"),
        ("random", "linprobe", "localization"),
        ("trivial", "trivial", "classification"),
        ("trivial", "trivial", "localization"),
    }
    assert cells == {(*c, s) for c in per_seed for s in (0, 1)}
    random = next(r for r in rows if r["model"] == "random")
    assert random["source"] == f"scratch:{run}" and random["baseline"] is True
    config = (out / "cells/random__knn__classification__seed1/config.yaml").read_text()
    assert "seed: 1" in config
    table = (out / "results.md").read_text()
    assert "mean ± std over 2 seeds" in table and "*random* (baseline)" in table
    assert (out / "summary.csv").read_text().splitlines()[0] == "model,protocol,task,metric,mean,std,n,baseline,pool"
