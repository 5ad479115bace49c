"""Loss curves from metrics.jsonl: training loss (smoothed) and the fixed-mask held-out / train-subset losses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mimkit.engine.metrics import read_metrics  # noqa: E402


def plot_loss_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    out = Path(out) if out else run_dir / "figures" / "loss_curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    series = {
        "train (batches, augmented)": [r for r in records if r.get("event") == "train"],
        "held-out (fixed masks)": [r for r in records if r.get("split") == "heldout"],
        "train subset (fixed masks)": [r for r in records if r.get("split") == "train_fixed"],
    }
    styles = {
        "train (batches, augmented)": dict(color="0.6", lw=1),
        "held-out (fixed masks)": dict(color="tab:red", marker="o", ms=3, lw=1.6),
        "train subset (fixed masks)": dict(color="tab:blue", marker="s", ms=3, lw=1.2, ls="--"),
    }
    for label, rows in series.items():
        rows = [r for r in rows if r.get("loss") is not None]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label, **styles[label])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MIM loss (log scale)")
    ax.set_yscale("log")  # the step-0 loss is several times the rest: a log axis keeps late progress visible
    ax.set_title(f"{run_dir.name}: reconstruction loss")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
