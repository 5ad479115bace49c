"""The combined task's two training losses per model, over seeds: the Dark Secrets paper's classification-vs-
localisation loss curves (its Figure 8 analogue), drawn by `mimkit compare` from its fine-tuning cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LOSSES = ("cls_loss", "loc_loss")


def read_curve(run_dir: Path, keys: tuple[str, ...] = LOSSES) -> dict[str, np.ndarray]:
    """{'step': (n,), key: (n,) ...} from a run's training log events that carry every key."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("event") == "train" and all(k in record for k in keys):
                rows.append(record)
    out = {"step": np.array([r["step"] for r in rows], dtype=float)}
    out.update({k: np.array([r[k] for r in rows], dtype=float) for k in keys})
    return out


def mean_curves(curves: list[dict[str, np.ndarray]], keys: tuple[str, ...] = LOSSES) -> dict[str, np.ndarray]:
    """Mean and sample std over seeds at the steps every curve logged: {'step', KEY, KEY_std}."""
    curves = [c for c in curves if len(c["step"])]
    if not curves:
        return {"step": np.zeros(0)}
    steps = sorted(set.intersection(*(set(c["step"].tolist()) for c in curves)))
    out = {"step": np.array(steps)}
    for key in keys:
        values = np.stack([np.array([c[key][c["step"].tolist().index(s)] for s in steps]) for c in curves])
        out[key] = values.mean(0)
        out[f"{key}_std"] = values.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(steps))
    return out


def plot_combined_losses(runs: dict[str, list[Path]], out: Path) -> Path | None:
    """A figure at `out`: one panel per loss, a line per model (mean over its runs, the seeds, with a band of +- one
    std). `runs` maps each model to its combined-task fine-tuning run directories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = {model: (mean_curves([read_curve(d) for d in dirs]), len(dirs)) for model, dirs in runs.items()}
    means = {model: m for model, m in means.items() if len(m[0]["step"])}
    if not means:
        return None
    fig, axes = plt.subplots(1, len(LOSSES), figsize=(4.2 * len(LOSSES), 3.3), dpi=120, squeeze=False)
    for model, (mean, seeds) in means.items():
        for ax, key in zip(axes[0], LOSSES):
            line = ax.plot(mean["step"], mean[key], lw=1.8, label=f"{model} ({seeds} seed(s))")[0]
            low, high = mean[key] - mean[f"{key}_std"], mean[key] + mean[f"{key}_std"]
            ax.fill_between(mean["step"], low, high, alpha=0.2, lw=0, color=line.get_color())
    for ax, title in zip(axes[0], ("classification loss", "localisation loss (L1)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("fine-tuning step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(frameon=False, fontsize=8)
    fig.suptitle("Combined task: the two losses while fine-tuning", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out
