"""The figure of `mimkit compare`: every model's score per task and protocol with its seed spread, against the bar
a model must clear (the best baseline that learns nothing), so "below raw pixels" is seen rather than read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mimkit.eval.pools import pool_sizes  # noqa: E402
from mimkit.viz.save import save_png_atomic  # noqa: E402

PROTOCOL_NAMES = {"knn": "kNN (frozen)", "linprobe": "linear probe (frozen)", "finetune": "fine-tuned"}
MARKERS = "osD^v<>ph*"  # with 10 or 20 colours, the marker tells apart models whose colour repeats


def bar_label(bar: dict[str, Any]) -> str:
    """The baseline a bar comes from, e.g. 'pixels kNN (frozen): 85.69' or 'trivial predictor: 0.21'."""
    if bar["protocol"] == "trivial":
        return f"trivial predictor: {bar['mean']:.4g}"
    return f"{bar['model']} {PROTOCOL_NAMES.get(bar['protocol'], bar['protocol'])}: {bar['mean']:.4g}"


def compare_figure(summary: list[dict[str, Any]], panels: list[dict[str, Any]]) -> plt.Figure | None:
    """One panel per task: for each protocol, each model's mean with its std over seeds as an error bar; a dashed
    line at the bar a model must clear (the best baseline that learns nothing for that protocol); a model that does
    not clear it is drawn hollow (the tables' †). `panels` (compare.figure_panels) names per task its metric, whether
    higher is better, its protocols and their bars. None when no model (only baselines) was measured."""
    models = list(dict.fromkeys(r["model"] for r in summary if not r["baseline"]))
    if not models or not panels:
        return None
    palette = plt.get_cmap("tab20" if len(models) > 10 else "tab10")
    colours = {m: palette(i % palette.N) for i, m in enumerate(models)}
    markers = {m: MARKERS[(i // palette.N) % len(MARKERS)] for i, m in enumerate(models)}
    lookup = {(r["model"], r["task"], r["protocol"]): r for r in summary}
    # a pool's n counts replicas (eval/pools.py): the title's seeds are the models' own; the legend names pools
    seeds = sorted({r["n"] for r in summary if not r["baseline"] and not r.get("pool")})
    seeds = seeds or sorted({r["n"] for r in summary if not r["baseline"]})
    pooled = pool_sizes(summary)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.5, 0.9 * len(models)) * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        task, metric, higher, protocols = panel["task"], panel["metric"], panel["higher"], panel["protocols"]
        width = 0.8 / len(models)
        for g, protocol in enumerate(protocols):
            bar = panel["bars"][protocol]
            for i, model in enumerate(models):
                row = lookup.get((model, task, protocol))
                if row is None:
                    continue
                beaten = bar is None or (row["mean"] > bar["mean"] if higher else row["mean"] < bar["mean"])
                x = g - 0.4 + width * (i + 0.5)
                ax.errorbar(
                    x,
                    row["mean"],
                    yerr=row["std"] if row["n"] > 1 else None,
                    fmt=markers[model],
                    color=colours[model],
                    markerfacecolor=colours[model] if beaten else "none",
                    capsize=3,
                    ms=6,
                )
            if bar is not None:
                ax.hlines(bar["mean"], g - 0.45, g + 0.45, colors="k", linestyles="--", lw=1)
                ax.annotate(
                    bar_label(bar),
                    (g - 0.45, bar["mean"]),
                    xytext=(0, 3),
                    textcoords="offset points",
                    fontsize=7,
                )
        ax.set_xticks(range(len(protocols)), [PROTOCOL_NAMES.get(p, p) for p in protocols])
        ax.set_xlim(-0.5, len(protocols) - 0.5)
        ax.set_title(task)
        ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
        ax.grid(axis="y", alpha=0.3)
    names = {m: f"{m} (pool of {pooled[m]})" if m in pooled else m for m in models}
    handles = [plt.Line2D([], [], marker=markers[m], ls="", color=colours[m], label=names[m]) for m in models]
    handles += [
        plt.Line2D([], [], ls="--", color="k", lw=1, label="best baseline that learns nothing"),
        plt.Line2D([], [], marker="o", ls="", color="0.3", markerfacecolor="none", label="not above it"),
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    spread = f"mean ± std over {seeds[-1]} seeds" if seeds[-1] > 1 else "one seed, no error bars"
    if len(seeds) > 1:
        spread = f"mean ± std over {seeds[0]}-{seeds[-1]} seeds (unfinished cells)"
    fig.suptitle(f"mimkit compare: {spread}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_compare(summary: list[dict[str, Any]], panels: list[dict[str, Any]], out: str | Path) -> Path | None:
    """Write compare_figure to `out` (PNG) in one atomic step (a kill or a second process mid-write leaves a whole
    figure); None, and nothing written, when there is no model to draw."""
    fig = compare_figure(summary, panels)
    return None if fig is None else save_png_atomic(fig, out)
