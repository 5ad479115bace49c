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


def test_a_probe_shows_top1_per_epoch_from_its_own_records():
    """linprobe's figure: top-1 against epochs (steps / steps per epoch), only the probe's records (a kNN's event
    in the same directory is left out)."""
    rows = [
        {
            "event": "eval",
            "command": "linprobe",
            "split": "heldout",
            "step": 5 * e,
            "epoch": e,
            "loss": 1 / e,
            "top1": 50.0 + e,
        }
        for e in (1, 2, 3)
    ] + [{"event": "eval", "command": "knn", "split": "heldout", "step": 0, "top1": 99.0}]
    probe = [r for r in rows if r["command"] == "linprobe"]
    fig = loss_curve_figure(probe, "probe", "cross-entropy", "centre crops", score="top1", steps_per_epoch=5)
    _, score_ax = fig.axes
    (line,) = score_ax.get_lines()
    assert list(line.get_xdata()) == [1.0, 2.0, 3.0] and list(line.get_ydata()) == [51.0, 52.0, 53.0]
    assert score_ax.get_xlabel() == "epoch" and score_ax.get_title() == "top-1 (%) per epoch"
    plt.close(fig)


def test_plot_loss_curves_keeps_one_commands_records(tmp_path, monkeypatch):
    import json

    import mimkit.viz.curves as curves

    rows = [
        {"event": "eval", "command": "linprobe", "split": "heldout", "step": 4, "loss": 0.5, "top1": 60.0},
        {"event": "eval", "command": "knn", "split": "heldout", "step": 0, "top1": 99.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen, original = {}, curves.loss_curve_figure

    def spy(records, *args, **kwargs):
        seen["records"] = records
        return original(records, *args, **kwargs)

    monkeypatch.setattr(curves, "loss_curve_figure", spy)
    out = curves.plot_loss_curves(tmp_path, score="top1", command="linprobe", steps_per_epoch=4)
    assert out.is_file() and [r["command"] for r in seen["records"]] == ["linprobe"]


def test_log_axes_label_few_short_ticks():
    """A log axis over about a decade gets 1, 2, 5 x 10^k in a short form and no minor labels (matplotlib's own
    minor labels, 2x10^4 3x10^4 4x10^4, overlapped); over several decades, powers of ten only."""
    from mimkit.viz.log_axes import readable_log_axes, short_number

    assert [short_number(v) for v in (500, 0.01, 2e4, 1.5e-5, 1e13)] == ["500", "0.01", "2e4", "1.5e-5", "1e13"]
    fig, (narrow, wide) = plt.subplots(1, 2)
    narrow.plot([6e3, 8e4], [1, 2])
    narrow.set_xscale("log")
    wide.plot([1e11, 2e13], [1, 2])
    wide.set_xscale("log")
    readable_log_axes(fig)
    fig.canvas.draw()

    def shown(ax):
        low, high = ax.get_xlim()
        return [t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]

    assert shown(narrow) == ["1e4", "2e4", "5e4"]
    assert shown(wide) == ["1e11", "1e12", "1e13"]
    assert not any(t.get_text() for t in narrow.get_xticklabels(minor=True))
    plt.close(fig)
