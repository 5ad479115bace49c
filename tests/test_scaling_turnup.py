"""The within-run over-fitting check (scaling/turnup.py): a held-out turn-up beyond the noise over seeds is called,
a curve still falling or a rise inside the noise is not, and `scaling analyze` reports it from curves.json."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mimkit.scaling.analyze import analyze_table, summary_lines
from mimkit.scaling.turnup import find_turnups, turnup_of

STEPS = list(range(100, 2100, 100))  # 20 evaluations


def curve(values) -> list[list[float]]:
    return [[0, 1.0]] + [[s, float(v)] for s, v in zip(STEPS, values)]  # step 0 = the untrained model: ignored


def u_shape(seed: int) -> np.ndarray:
    """Falls to a minimum at step 1,000 (index 9), then rises by 0.05; each seed offset and lightly jittered."""
    x = np.arange(len(STEPS))
    base = 0.5 + 0.0005 * (x - 9) ** 2 + 0.01 * seed
    return base + 0.0005 * np.sin(3.0 * x + seed)


def falling(seed: int) -> np.ndarray:
    return 0.6 - 0.01 * np.arange(len(STEPS)) + 0.002 * seed


def run_curves(model: str, held: np.ndarray, train: np.ndarray) -> dict:
    """One run's entry of a sweep's curves.json: 2,000 steps of 32 on 600 images of data 0.01."""
    return {
        "model": model,
        "data": 0.01,
        "iterations": 2000,
        "batch_size": 32,
        "data_images": 600,
        "heldout": curve(held),
        "train_fixed": curve(train),
    }


def test_a_turn_up_beyond_the_noise_is_called_and_measured_at_the_mean_curves_minimum():
    held = [curve(u_shape(s)) for s in range(3)]
    train = [curve(falling(s)) for s in range(3)]
    v = turnup_of(held, train)
    mean_curve = np.mean([u_shape(s) for s in range(3)], axis=0)
    at_min = int(np.argmin(mean_curve))
    assert v["min_step"] == STEPS[at_min] == 1000
    rises = [u_shape(s)[-1] - u_shape(s)[at_min] for s in range(3)]
    assert v["rise"] == pytest.approx(np.mean(rises)) and v["rise_std"] == pytest.approx(np.std(rises, ddof=1))
    assert v["min_loss"] == pytest.approx(mean_curve[at_min]) and v["final_loss"] == pytest.approx(mean_curve[-1])
    # the jitter estimate: std of successive differences over the last half, / sqrt 2, averaged over seeds
    tails = [np.diff(u_shape(s)[len(STEPS) // 2 :]) for s in range(3)]
    assert v["jitter"] == pytest.approx(np.mean([np.std(d, ddof=1) / math.sqrt(2) for d in tails]))
    assert v["train_drop"] == pytest.approx(falling(1)[at_min] - falling(1)[-1])  # seed 1 is the mean of 0..2
    assert v["turned_up"] is True and "fell" in v["reason"]
    assert v["untrained_loss"] == 1.0  # step 0 of every curve: the learn-nothing reference, not part of the curve


def test_a_curve_still_falling_and_a_rise_inside_the_noise_are_not_called():
    train = [curve(falling(s)) for s in range(3)]
    v = turnup_of([curve(falling(s)) for s in range(3)], train)
    assert v["turned_up"] is False and v["min_step"] == STEPS[-1] and "last evaluation" in v["reason"]
    # flat from mid-run with evaluation noise of +-0.01: the last point may sit above the minimum, but not by 3x noise
    rng = np.random.default_rng(0)
    noisy = [curve(np.r_[falling(0)[:10], 0.5 + 0.01 * rng.standard_normal(10)]) for _ in range(3)]
    v = turnup_of(noisy, train)
    assert v["rise"] > 0 and v["turned_up"] is False and "<=" in v["reason"]


def test_no_call_when_the_train_subset_loss_rises_too_or_the_noise_cannot_be_measured():
    held = [curve(u_shape(s)) for s in range(3)]
    rising_train = [curve(u_shape(s) - 0.02) for s in range(3)]  # both rise: training got worse, not over-fitting
    v = turnup_of(held, rising_train)
    assert v["turned_up"] is False and "did not fall" in v["reason"]
    short = [[[100, 0.5], [200, 0.4], [300, 0.45]]]  # one seed, 3 evaluations: no jitter estimate
    v = turnup_of(short, [[[100, 0.5], [200, 0.4], [300, 0.3]]])
    assert v["turned_up"] is None and "too few evaluations" in v["reason"]
    assert turnup_of(held, [])["turned_up"] is None  # no train-subset curve


def test_find_turnups_groups_seeds_per_model_data_and_length():
    curves = {f"big-seed{s}": run_curves("big", u_shape(s), falling(s)) for s in range(3)}
    curves |= {f"small-seed{s}": run_curves("small", falling(s), falling(s)) for s in range(3)}
    found = {(e["model"], e["data"]): e for e in find_turnups(curves)}
    assert set(found) == {("big", "0.01"), ("small", "0.01")}
    assert found[("big", "0.01")]["seeds"] == 3 and found[("big", "0.01")]["turned_up"] is True
    assert found[("small", "0.01")]["turned_up"] is False


def test_scaling_analyze_reports_turn_ups_from_curves_json(tmp_path: Path):
    rows, curves = [], {}
    for model, params, shape in (("big", 1_000_000, u_shape), ("small", 100_000, falling)):
        for s in range(3):
            run = f"{model}-seed{s}"
            held = shape(s)
            rows.append(
                {
                    "run": run,
                    "model": model,
                    "params": params,
                    "data": 0.01,
                    "data_images": 600,
                    "iterations": 2000,
                    "seed": s,
                    "heldout_loss": held[-1],
                    "train_loss": falling(s)[-1],
                }
            )
            curves[run] = run_curves(model, held, falling(s))
    with open(tmp_path / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "curves.json").write_text(json.dumps(curves))
    result = analyze_table(tmp_path / "results.csv", tmp_path / "analysis")
    calls = {t["model"]: t["turned_up"] for t in result["turnups"]}
    assert calls == {"big": True, "small": False}
    assert list(calls) == ["small", "big"]  # by size, as the other tables and figures (not by name)
    md = (tmp_path / "analysis/results.md").read_text()
    assert md.index("## small") < md.index("## big")  # the rows were written big first
    assert (
        "Held-out loss inside each run" in md and "| big | 0.01 | 2000 | 3 | 1.0000 | 1000 |" in md and "**yes**" in md
    )
    figure = tmp_path / "analysis/turnup_curves.png"
    assert str(figure) in result["figures"] and figure.stat().st_size > 1000
    assert any("held-out turn-up inside big on 0.01" in line for line in summary_lines(result))
    assert not any("inside small" in line for line in summary_lines(result))
