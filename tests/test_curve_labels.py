"""Loss-curve figures say what their method measured: each registered method names its loss and how its held-out
evaluation holds inputs fixed, and a run whose evaluation scores (top-1, IoU) gets that score's panel."""

from __future__ import annotations

import matplotlib.pyplot as plt

from mimkit.methods import registry
from mimkit.viz.curves import loss_curve_figure


def _records(score=None):
    rows = [{"event": "train", "step": s, "loss": 2.0 / (s + 1)} for s in range(0, 40, 10)]
    for s in (0, 20, 40):
        extra = {score: 10.0 + s} if score else {}
        rows.append({"event": "eval", "split": "heldout", "step": s, "loss": 1.0 / (s + 1), **extra})
        rows.append({"event": "eval", "split": "train_fixed", "step": s, "loss": 0.9 / (s + 1), **extra})
    return rows


def test_every_method_names_its_loss_and_its_evaluation():
    labels = {spec.name: (spec.loss_label, spec.eval_inputs) for spec in registry.specs()}
    assert all(loss != "training loss" for loss, _ in labels.values())
    assert len({loss for loss, _ in labels.values()}) == len(labels)  # no two methods share a loss name
    assert labels["mae"][1] == labels["simmim"][1] == "fixed masks" and labels["mocov3"][1] == "fixed views"
    assert labels["supervised"][1] == ""  # a classifier's evaluation has nothing random to fix


def test_a_mim_run_has_one_panel_labelled_with_its_loss():
    fig = loss_curve_figure(_records(), "run: MAE loss", "MAE loss (MSE on masked patches)", "fixed masks")
    (ax,) = fig.axes
    assert "MAE loss" in ax.get_ylabel() and ax.get_title() == "run: MAE loss"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["train (batches, augmented)", "held-out (fixed masks)", "train subset (fixed masks)"]
    plt.close(fig)


def test_a_fine_tune_shows_its_top1_per_evaluation_and_no_mim_wording():
    spec = registry.get("supervised")
    fig = loss_curve_figure(_records("top1"), "ft (fine-tuning)", spec.loss_label, spec.eval_inputs, score="top1")
    loss_ax, score_ax = fig.axes
    words = " ".join(
        [loss_ax.get_ylabel(), *[t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]]
    ).lower()
    assert "cross-entropy" in words and "mim" not in words and "mask" not in words
    assert score_ax.get_ylabel() == "top-1 (%)"
    (held, subset) = score_ax.get_lines()
    assert list(held.get_ydata()) == [10.0, 30.0, 50.0] and list(held.get_xdata()) == [0, 20, 40]
    assert (held.get_label(), subset.get_label()) == ("held-out", "train subset")
    plt.close(fig)


def test_no_score_panel_when_the_evaluation_logged_none():
    fig = loss_curve_figure(_records(), "t", "distillation loss", score="top1")
    assert len(fig.axes) == 1
    plt.close(fig)
