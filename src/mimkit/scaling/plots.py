"""Figures in the data-scaling paper's style: held-out loss against one axis, one line per value of another, one
panel per value of the third; over-fit cells marked, fitted power laws dashed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mimkit.scaling.table import Point, data_order, model_order


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(n: int, title: str):
    plt = _plt()
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.2 * cols, 7.0), 3.4 * rows), squeeze=False, sharey=True)
    fig.suptitle(title)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig, path: Path) -> Path:
    from mimkit.viz.log_axes import readable_log_axes

    readable_log_axes(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def _fmt(value: float) -> str:
    return f"{value:g}" if value < 1e4 else f"{value:.3g}"


def _line_plot(
    points: list[Point],
    x_of,
    line_key: str,
    panel_key: str,
    line_order: list,
    panel_order: list,
    xlabel: str,
    title: str,
    path: Path,
    flagged: set,
    log_x: bool,
    fits: dict | None = None,
) -> Path:
    fig, axes = _panels(len(panel_order), title)
    colors = _plt().cm.viridis(np.linspace(0, 0.9, max(len(line_order), 1)))
    for ax, panel in zip(axes, panel_order):
        for color, line in zip(colors, line_order):
            cells = sorted(
                (
                    p
                    for p in points
                    if getattr(p, panel_key) == panel and getattr(p, line_key) == line and x_of(p) is not None
                ),
                key=x_of,
            )
            if not cells:
                continue
            xs, ys = [x_of(p) for p in cells], [p.heldout_loss for p in cells]
            ax.plot(xs, ys, "o-", color=color, label=str(line) if not isinstance(line, float) else _fmt(line))
            bad = [(x_of(p), p.heldout_loss) for p in cells if (p.model, p.data, p.iterations) in flagged]
            if bad:
                ax.plot(*zip(*bad), "x", color="red", markersize=10, mew=2)
            fit = (fits or {}).get((panel, line))
            if fit and "alpha" in fit:
                grid = np.geomspace(min(xs), fit["x_next"], 50)
                ax.plot(grid, fit["E"] + fit["A"] * grid ** -fit["alpha"], "--", color=color, alpha=0.7)
                ax.errorbar(
                    [fit["x_next"]],
                    [fit["predicted_next"]],
                    yerr=[fit["predicted_next_err"]],
                    fmt="*",
                    color=color,
                    alpha=0.8,
                )
        ax.set_title(f"{panel_key} = {panel if not isinstance(panel, float) else _fmt(panel)}")
        ax.set_xlabel(xlabel)
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out loss (fixed masks)")
    axes[0].legend(title=line_key, fontsize=8)
    return _save(fig, path)


def draw_all(points: list[Point], result: dict[str, Any], out: Path, curves: dict[str, Any] | None) -> list[Path]:
    flagged = {tuple(k) for k in result["overfit"]["flagged"]}
    models, datas = model_order(points), data_order(points)
    iterations = sorted({p.iterations for p in points})
    numeric_data = all(p.data_size is not None for p in points)
    rank = {d: i for i, d in enumerate(datas)}
    data_x = (lambda p: p.data_size) if numeric_data else (lambda p: rank[p.data])
    figures = []
    data_fits = {(f["iterations"], f["model"]): f for f in result["fits"]["data"]}
    figures.append(
        _line_plot(
            points,
            data_x,
            "model",
            "iterations",
            models,
            iterations,
            "data size",
            "held-out loss vs data (one line per model)",
            out / "loss_vs_data.png",
            flagged,
            numeric_data,
            data_fits if numeric_data else None,
        )
    )
    figures.append(
        _line_plot(
            points,
            lambda p: p.iterations,
            "model",
            "data",
            models,
            datas,
            "iterations",
            "held-out loss vs training length (x: over-fit)",
            out / "loss_vs_iterations.png",
            flagged,
            True,
        )
    )
    param_fits = {(f["iterations"], f["data"]): f for f in result["fits"]["params"]}
    figures.append(
        _line_plot(
            points,
            lambda p: p.params,
            "data",
            "iterations",
            datas,
            iterations,
            "parameters (encoder)",
            "held-out loss vs model size (one line per data size)",
            out / "loss_vs_params.png",
            flagged,
            True,
            param_fits,
        )
    )
    if all(p.get("compute") is not None for p in points):
        figures.append(_compute_plot(points, result["fits"]["compute"], models, out / "loss_vs_compute.png"))
    if any(p.get("finetune_top1") is not None for p in points):
        figures.append(_accuracy_plot(points, result, models, out / "loss_vs_finetune.png"))
    if any(p.get("train_loss") is not None for p in points):
        figures.append(_gap_plot(points, models, datas, out / "train_heldout_gap.png"))
    if curves is not None:  # a sweep's curves.json, read once by the caller
        figures.append(_curves_plot(curves, models, datas, out / "heldout_curves.png"))
    return figures


def _compute_plot(points: list[Point], fit: dict[str, Any], models: list[str], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(models)))
    for color, model in zip(colors, models):
        cells = [p for p in points if p.model == model]
        ax.scatter([p.get("compute") for p in cells], [p.heldout_loss for p in cells], color=color, label=model)
    if fit and "alpha" in fit:
        xs = np.geomspace(min(c["compute"] for c in fit["frontier"]), fit["x_next"], 50)
        ax.plot(xs, fit["E"] + fit["A"] * xs ** -fit["alpha"], "k--", label=f"frontier fit, alpha {fit['alpha']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("held-out loss")
    ax.set_title("held-out loss vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _accuracy_plot(points: list[Point], result: dict[str, Any], models: list[str], path: Path) -> Path:
    label = result.get("transfer", "fine-tuned top-1")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(models)))
    for color, model in zip(colors, models):
        cells = [p for p in points if p.model == model and p.get("finetune_top1") is not None]
        ax.scatter([p.heldout_loss for p in cells], [p.get("finetune_top1") for p in cells], color=color, label=model)
        bar = result.get("bars", {}).get(model, {})
        if bar.get("learns_nothing") is not None:
            ax.axhline(bar["learns_nothing"], color=color, ls="--", lw=1, label=f"{model}: best that learns nothing")
        if bar.get("scratch") is not None:
            ax.axhline(bar["scratch"], color=color, ls=":", lw=1.2, label=f"{model}: random init, same protocol")
    overall = result["correlation"]["overall"]
    if overall.get("pearson") is not None:
        ax.set_title(
            f"{label} vs held-out loss\nPearson {overall['pearson']:+.2f}, "
            f"Spearman {overall['spearman']:+.2f} (n={overall['n']})"
        )
    ax.set_xlabel("held-out loss")
    ax.set_ylabel(f"{label} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _gap_plot(points: list[Point], models: list[str], datas: list[str], path: Path) -> Path:
    fig, axes = _panels(len(datas), "held-out minus train loss (fixed masks) vs training length")
    colors = _plt().cm.viridis(np.linspace(0, 0.9, len(models)))
    for ax, data in zip(axes, datas):
        for color, model in zip(colors, models):
            cells = sorted(
                (p for p in points if p.data == data and p.model == model and p.get("train_loss") is not None),
                key=lambda p: p.iterations,
            )
            if cells:
                ax.plot(
                    [p.iterations for p in cells],
                    [p.heldout_loss - p.get("train_loss") for p in cells],
                    "o-",
                    color=color,
                    label=model,
                )
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"data = {data}")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gap")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def _curves_plot(curves: dict[str, Any], models: list[str], datas: list[str], path: Path) -> Path:
    """Every run's held-out curve against images seen (solid; longer runs darker) with its train-subset curve
    (dotted), one panel per data size, one colour per model."""
    datas = [d for d in datas if any(str(c.get("data")) == d for c in curves.values())] or ["all"]
    fig, axes = _panels(len(datas), "fixed-mask loss during training: held-out solid, train subset dotted")
    colors = dict(zip(models, _plt().cm.viridis(np.linspace(0, 0.9, max(len(models), 1)))))
    lengths = sorted({c.get("iterations", 0) for c in curves.values()})
    for ax, data in zip(axes, datas):
        for run, c in sorted(curves.items()):
            if data != "all" and str(c.get("data")) != data:
                continue
            color = colors.get(c.get("model"), "gray")
            alpha = 0.35 + 0.65 * (lengths.index(c.get("iterations", 0)) + 1) / len(lengths)
            batch = c.get("batch_size", 1)
            for split, style in (("heldout", "-"), ("train_fixed", ":")):
                points = [(step, loss) for step, loss in c.get(split) or [] if step > 0]  # log x: no step 0
                if points:
                    steps, losses = zip(*points)
                    label = c.get("model") if split == "heldout" and c.get("iterations") == lengths[-1] else None
                    ax.plot(np.array(steps) * batch, losses, style, color=color, alpha=alpha, lw=1.2, label=label)
        ax.set_title(f"data = {data}")
        ax.set_xlabel("images seen")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (fixed masks)")
    axes[0].legend(fontsize=8)
    return _save(fig, path)
