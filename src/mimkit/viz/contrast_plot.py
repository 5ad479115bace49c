"""The figure of `compare --contrast`: each pair's paired difference per task and protocol, with its seeds' own
differences as dots and the margin the tables' rule asks of it as a grey band around zero, so a reader sees at once
which differences clear the seed spread and which sit inside it; the colour is the verdict's, which also asks for
the t-test's p < 0.05."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mimkit.eval.spread import PRIMARY  # noqa: E402
from mimkit.viz.compare_plot import PROTOCOL_NAMES  # noqa: E402
from mimkit.viz.save import save_png_atomic  # noqa: E402

A_COLOUR, B_COLOUR, TIE_COLOUR = "tab:blue", "tab:orange", "0.45"
HIGHER_IS_BETTER = {metric: higher for metric, higher in PRIMARY.values()}


def verdict_colour(contrast: dict[str, Any]) -> str | None:
    """Blue when A is better, orange when B is, grey for ≈ (inside the spread, or beyond it with p >= 0.05), None
    (hollow) with no verdict."""
    verdict = contrast["verdict"]
    if verdict == f"{contrast['a']} better":
        return A_COLOUR
    if verdict == f"{contrast['b']} better":
        return B_COLOUR
    return TIE_COLOUR if verdict.startswith("≈") else None


def contrast_figure(contrasts: list[dict[str, Any]]) -> plt.Figure | None:
    """One panel per metric (differences in top-1 and in IoU share no axis), one row per (pair, task, protocol):
    Δ = A − B paired by seed with ± its std, each seed's Δ as a small dot, and the band ± the larger seed spread of
    A and B (inside it the tables call no finding). Rows with no common seed are left out; None when none is left."""
    drawn = [c for c in contrasts if c["n"]]
    if not drawn:
        return None
    metrics = list(dict.fromkeys(c["metric"] for c in drawn))
    heights = [sum(c["metric"] == m for c in drawn) for m in metrics]
    fig, axes = plt.subplots(
        len(metrics),
        1,
        figsize=(7.5, 0.9 + 0.42 * sum(heights) + 0.5 * len(metrics)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    pairing = "paired by seed" if all(c.get("paired", True) for c in drawn) else "paired by seed (pools: unpaired)"
    for ax, metric in zip(axes[:, 0], metrics):
        rows = [c for c in drawn if c["metric"] == metric]
        for y, c in enumerate(rows):
            margin = max(c["a_std"], c["b_std"]) if min(c.get("a_n", c["n"]), c.get("b_n", c["n"])) > 1 else 0.0
            if margin:
                ax.fill_betweenx([y - 0.35, y + 0.35], -margin, margin, color="0.88", lw=0)
            seeds = c.get("seed_deltas") or []
            ax.plot(seeds, [y + 0.18] * len(seeds), "o", ms=3, color="0.35", alpha=0.8)
            colour = verdict_colour(c)
            ax.errorbar(
                c["delta"],
                y,
                xerr=c["delta_std"] if c["n"] > 1 else None,
                fmt="o",
                ms=7,
                capsize=3,
                color=colour or "0.2",
                markerfacecolor=colour or "none",
            )
        ax.axvline(0, color="k", lw=0.8)
        labels = [
            f"{c['a']} − {c['b']}{'' if c.get('paired', True) else ' (unpaired)'}\n{c['task']}, "
            f"{PROTOCOL_NAMES.get(c['protocol'], c['protocol'])}"
            for c in rows
        ]
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        higher = HIGHER_IS_BETTER.get(metric, True)
        ax.set_xlabel(
            f"Δ {metric} = A − B, {pairing} ({'higher' if higher else 'lower'} is better: "
            f"{'> 0' if higher else '< 0'} favours A)"
        )
        ax.grid(axis="x", alpha=0.3)
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=A_COLOUR, label="A better (beyond the spread, p < 0.05)"),
        plt.Line2D([], [], marker="o", ls="", color=B_COLOUR, label="B better (beyond the spread, p < 0.05)"),
        plt.Line2D(
            [], [], marker="o", ls="", color=TIE_COLOUR, label="≈ not a finding (inside the spread, or p ≥ 0.05)"
        ),
        plt.Line2D(
            [],
            [],
            marker="o",
            ls="",
            color="0.2",
            markerfacecolor="none",
            label="no verdict (< 2 seeds, no spread, NaN)",
        ),
        plt.Line2D([], [], marker="o", ls="", ms=3, color="0.35", label="one seed's Δ"),
        plt.Rectangle((0, 0), 1, 1, color="0.88", label="± larger seed std of A, B"),
    ]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"mimkit compare: contrasts ({pairing.replace('seed', 'evaluation seed', 1)})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_contrasts(contrasts: list[dict[str, Any]], out: str | Path) -> Path | None:
    """Write contrast_figure to `out` (PNG) in one atomic step; None, and nothing written, with nothing to draw."""
    fig = contrast_figure(contrasts)
    return None if fig is None else save_png_atomic(fig, out)
