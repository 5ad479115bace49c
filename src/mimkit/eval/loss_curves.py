"""The combined tasks' two training losses per model, over seeds: the Dark Secrets paper's classification-vs-
localisation loss curves (its Figure 8 analogue), drawn by `mimkit compare` from its fine-tuning cells, and the
same curves read at a few points of training with their seed spread, next to the final held-out metrics (a table,
so that "lowers the loss faster" can be weighed against the spread)."""

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


def plot_combined_losses(runs: dict[str, list[Path]], out: Path, task: str = "combined") -> Path | None:
    """A figure at `out`: one panel per loss, a line per model (mean over its runs, the seeds, with a band of +- one
    std). `runs` maps each model to its fine-tuning run directories on `task` (combined or cluttered_combined)."""
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
    name = "Cluttered combined task" if task == "cluttered_combined" else "Combined task"
    fig.suptitle(f"{name}: the two losses while fine-tuning", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


HELDOUT = (("top1", "top-1 (%)", 2), ("mean_iou", "mean IoU", 3), ("ap50", "AP@0.5", 3))
FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def _mean_std(values: list[float], digits: int) -> str:
    mean = float(np.mean(values))
    return f"{mean:.{digits}f}" + (f" ± {float(np.std(values, ddof=1)):.{digits}f}" if len(values) > 1 else "")


def losses_markdown(runs: dict[str, list[Path]], task: str = "combined", fractions=FRACTIONS) -> str:
    """Two tables, mean +- sample std over each model's runs: the training losses at `fractions` of the steps every
    run logged (the logged step nearest to each), and the final held-out top-1, mean IoU and AP@0.5 (from each
    run's results.json)."""
    curves = {model: [read_curve(d) for d in dirs] for model, dirs in runs.items()}
    shared = [set(c["step"].tolist()) for cs in curves.values() for c in cs if len(c["step"])]
    lines = [f"# {task}: the losses while fine-tuning and the final held-out metrics", ""]
    if shared:
        steps = np.array(sorted(set.intersection(*shared)))
        marks = list(dict.fromkeys(float(steps[np.abs(steps - f * steps[-1]).argmin()]) for f in fractions))
        header = [f"{key} at step {int(m)}" for key in LOSSES for m in marks]
        lines += ["| model | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        for model, cs in curves.items():
            cs = [c for c in cs if len(c["step"])]
            values = [
                _mean_std([float(c[key][c["step"].tolist().index(m)]) for c in cs], 3) for key in LOSSES for m in marks
            ]
            lines.append(f"| {model} ({len(cs)} runs) | " + " | ".join(values) + " |")
        lines.append("")
    lines += ["| model | " + " | ".join(name for _, name, _ in HELDOUT) + " |", "|---|" + "---|" * len(HELDOUT)]
    for model, dirs in runs.items():
        files = [Path(d) / "results.json" for d in dirs]
        results = [json.loads(f.read_text()) for f in files if f.is_file()]
        cells = []
        for key, _, digits in HELDOUT:
            values = [float(r[f"final_heldout_{key}"]) for r in results if f"final_heldout_{key}" in r]
            cells.append(_mean_std(values, digits) if values else "")
        lines.append(f"| {model} ({len(results)} runs) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
