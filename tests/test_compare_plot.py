"""compare.png: each model's cell drawn against the bar it must clear (the best baseline that learns nothing)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from mimkit.eval.compare import best_baseline, figure_panels, summarize, write_tables
from mimkit.viz.compare_plot import compare_figure


def _row(model, protocol, value, seed=0, baseline=False, task="classification", metric="top1"):
    return dict(
        model=model, protocol=protocol, task=task, metric=metric, value=value, seed=seed, baseline=baseline, source=""
    )


ROWS = [
    *(_row("mae", "knn", v, s) for s, v in enumerate((70.0, 72.0, 74.0))),
    *(_row("mae", "linprobe", v, s) for s, v in enumerate((81.0, 82.0, 83.0))),
    *(_row("mae", "finetune", v, s) for s, v in enumerate((90.0, 91.0, 92.0))),
    *(_row("pixels", "knn", 78.0, s, True) for s in range(3)),
    *(_row("pixels", "linprobe", 80.0, s, True) for s in range(3)),
    *(_row("trivial", "trivial", 10.0, s, True) for s in range(3)),
    *(_row("mae", "finetune", v, s, task="keypoints", metric="keypoint_error") for s, v in enumerate((0.3, 0.31))),
    _row("trivial", "trivial", 0.21, 0, True, task="keypoints", metric="keypoint_error"),
    _row("random", "linprobe", 0.25, 0, True, task="keypoints", metric="keypoint_error"),
    _row("supervised", "knn", 76.0),  # one seed: no error bar
]


def test_the_bar_is_the_best_baseline_of_the_protocol_and_every_baseline_for_finetuning():
    summary = summarize(ROWS)
    assert best_baseline(summary, "classification", "knn")["mean"] == 78.0
    assert best_baseline(summary, "classification", "linprobe")["mean"] == 80.0
    assert best_baseline(summary, "classification", "finetune")["mean"] == 80.0  # max of 78, 80 and 10
    bar = best_baseline(summary, "keypoints", "finetune")  # lower is better: the smallest error, not random's 0.25
    assert (bar["model"], bar["mean"]) == ("trivial", 0.21)
    bar = best_baseline(summary, "keypoints", "linprobe")  # the trivial predictor counts under every protocol
    assert (bar["model"], bar["mean"]) == ("trivial", 0.21)
    assert best_baseline([r for r in summary if not r["baseline"]], "classification", "knn") is None


def _markers(ax):
    """(x, y, hollow) of every drawn model marker in one panel."""
    points = []
    for line in ax.lines:
        if line.get_marker() == "o" and len(line.get_xdata()) == 1:
            face = line.get_markerfacecolor()
            hollow = isinstance(face, str) and face == "none" or (not isinstance(face, str) and face[3] == 0)
            points.append((float(line.get_xdata()[0]), float(line.get_ydata()[0]), hollow))
    return sorted(points)


def test_models_under_the_bar_are_hollow_and_the_bar_is_drawn_per_protocol():
    summary = summarize(ROWS)
    fig = compare_figure(summary, figure_panels(summary))
    try:
        classification, keypoints = fig.axes[:2]
        assert classification.get_title() == "classification" and keypoints.get_title() == "keypoints"
        points = _markers(classification)
        # mae: kNN 72 under raw pixels' 78, linear probe 82 over 80, fine-tuned 91 over 80; supervised kNN 76 under
        assert [(y, hollow) for _, y, hollow in points] == [(72.0, True), (76.0, True), (82.0, False), (91.0, False)]
        segments = [seg for c in classification.collections for seg in c.get_segments()]
        bars = sorted(float(a[1]) for a, b in segments if a[1] == b[1] and a[0] != b[0])  # horizontal: the bars
        assert bars == [78.0, 80.0, 80.0]
        spreads = sorted((float(a[1]), float(b[1])) for a, b in segments if a[0] == b[0])  # vertical: the std
        assert spreads == [(70.0, 74.0), (81.0, 83.0), (90.0, 92.0)]  # none for supervised's single seed
        # keypoint error 0.305 is worse than the trivial 0.21 (lower is better): hollow
        assert [(y, hollow) for _, y, hollow in _markers(keypoints)] == [(pytest.approx(0.305), True)]
        assert "lower is better" in keypoints.get_ylabel()
        assert [t.get_text() for t in keypoints.texts] == ["trivial predictor: 0.21"]
        assert fig.get_suptitle() == "mimkit compare: mean ± std over 1-3 seeds (unfinished cells)"
    finally:
        plt.close(fig)


def test_a_comparison_of_baselines_alone_draws_nothing_and_tables_write_the_figure(tmp_path):
    baselines = summarize([r for r in ROWS if r["baseline"]])
    assert figure_panels(baselines) == [] and compare_figure(baselines, figure_panels(baselines)) is None
    write_tables(ROWS, tmp_path)
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*tmp*"))
    write_tables([r for r in ROWS if r["baseline"]], tmp_path)  # tables rebuilt without a model: no stale figure
    assert (tmp_path / "results.md").is_file() and not (tmp_path / "compare.png").exists()


def test_models_past_the_palette_differ_by_marker():
    """tab20 has 20 colours: the 21st model repeats the first one's colour, so its marker differs."""
    rows = [_row(f"m{i:02d}", "knn", 50.0 + i) for i in range(21)] + [_row("pixels", "knn", 40.0, 0, True)]
    summary = summarize(rows)
    fig = compare_figure(summary, figure_panels(summary))
    try:
        handles = {h.get_label(): h for h in fig.legends[0].legend_handles}
        first, last = handles["m00"], handles["m20"]
        assert first.get_color() == last.get_color() and first.get_marker() != last.get_marker()
    finally:
        plt.close(fig)
