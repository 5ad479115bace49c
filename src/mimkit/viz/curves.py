"""Loss curves from metrics.jsonl: the training loss and the held-out / train-subset evaluations, labelled with what
the run's method measured (its registry entry's loss_label and eval_inputs), and beside them the run's score (top-1
of a fine-tune, IoU of a task head) when its evaluation has one."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mimkit.engine.metrics import read_metrics  # noqa: E402
from mimkit.viz.log_axes import readable_log_axes  # noqa: E402

SCORE_NAMES = {"top1": "top-1 (%)", "top5": "top-5 (%)", "mean_iou": "mean IoU"}


def plot_loss_curves(
    run_dir: str | Path,
    out: str | Path | None = None,
    loss_label: str = "training loss",
    eval_inputs: str = "",
    score: str | None = None,
    title: str | None = None,
    steps_per_epoch: float | None = None,
    command: str | None = None,
) -> Path:
    """RUN/figures/loss_curves.png. `score` names a metric the evaluations logged (e.g. top1) to draw in a second
    panel, against epochs when `steps_per_epoch` is given; `title` defaults to the run directory's name and the
    loss; `command` keeps only that command's records (a linear probe's beside a kNN's in one directory)."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "figures" / "loss_curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    records = read_metrics(run_dir / "metrics.jsonl")
    if command is not None:
        records = [r for r in records if r.get("command") == command]
    fig = loss_curve_figure(
        records, title or f"{run_dir.name}: {loss_label}", loss_label, eval_inputs, score, steps_per_epoch
    )
    fig.savefig(out)
    plt.close(fig)
    return out


def loss_curve_figure(
    records: list[dict],
    title: str,
    loss_label: str,
    eval_inputs: str = "",
    score: str | None = None,
    steps_per_epoch: float | None = None,
) -> plt.Figure:
    """The figure of plot_loss_curves, from metrics.jsonl's records."""
    how = f" ({eval_inputs})" if eval_inputs else ""
    eval_label, subset_label = f"held-out{how}", f"train subset{how}"
    series = {
        "train (batches, augmented)": ([r for r in records if r.get("event") == "train"], dict(color="0.6", lw=1)),
        eval_label: (
            [r for r in records if r.get("split") == "heldout"],
            dict(color="tab:red", marker="o", ms=3, lw=1.6),
        ),
        subset_label: (
            [r for r in records if r.get("split") == "train_fixed"],
            dict(color="tab:blue", marker="s", ms=3, lw=1.2, ls="--"),
        ),
    }
    scored = score is not None and score != "loss" and any(r.get(score) is not None for r in series[eval_label][0])
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(12 if scored else 7, 4.2), dpi=120, squeeze=False)
    ax = axes[0, 0]
    for label, (rows, style) in series.items():
        rows = [r for r in rows if r.get("loss") is not None]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label, **style)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{loss_label} (log scale)")
    ax.set_yscale("log")  # the step-0 loss is several times the rest: a log axis keeps late progress visible
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False)
    if scored:
        ax = axes[0, 1]
        for label, (rows, style) in list(series.items())[1:]:
            rows = [r for r in rows if r.get(score) is not None]
            if rows:
                x = [r["step"] / steps_per_epoch if steps_per_epoch else r["step"] for r in rows]
                ax.plot(x, [r[score] for r in rows], label=label, **style)
        name = SCORE_NAMES.get(score, score.replace("_", " "))
        ax.set_xlabel("epoch" if steps_per_epoch else "optimizer step")
        ax.set_ylabel(name)
        ax.set_title(f"{name} per epoch" if steps_per_epoch else f"{name} at each evaluation")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    readable_log_axes(fig)
    fig.tight_layout()
    return fig
