"""The bench suite's time breakdown as one stacked bar per implementation: where each step's time goes, with the
part of the matmul and attention time their FLOPs would take at the peak drawn solid, so the bar's solid part is
the MFU and everything lighter is the gap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mimkit.bench.breakdown import FLOP_KINDS, KINDS  # noqa: E402

COLORS = {
    "matmul": "tab:blue",
    "attention": "tab:orange",
    "elementwise": "tab:green",
    "copies": "tab:red",
    "optimizer": "tab:purple",
    "communication": "tab:brown",
    "other": "tab:pink",
    "idle": "0.45",
}


def plot_time_breakdown(result: dict[str, Any], out: str | Path) -> Path:
    """Stacked horizontal bars, one per profiled row of a `run_suite` result, in percent of the step."""
    rows = [r for r in result["rows"] if r.get("breakdown")]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.3), dpi=120)
    labels = [f"{r['group']}: {r['impl']}" for r in rows]
    for y, r in enumerate(rows):
        b, left = r["breakdown"], 0.0
        for kind in KINDS:
            share = 100 * b["shares"][kind]
            at_peak = share - 100 * b["gap"][kind]  # 0 for the kinds that count no FLOPs
            for width, alpha in ((at_peak, 1.0), (share - at_peak, 0.45)):
                if width > 0:
                    ax.barh(y, width, left=left, color=COLORS[kind], alpha=alpha, edgecolor="white", linewidth=0.5)
                    left += width
    # the kinds that count no FLOPs are all gap, so they are drawn (and shown here) lighter
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[k], alpha=1.0 if k in FLOP_KINDS else 0.45) for k in KINDS]
    handles.append(plt.Rectangle((0, 0), 1, 1, color="tab:blue", alpha=0.45))
    ax.legend(
        handles,
        [*KINDS, "matmul below the peak"],
        fontsize=7,
        frameon=False,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
    )
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of a training step (solid matmul and attention: their FLOPs at the peak = MFU)")
    ax.set_title(f"Where the time goes: {result['device']}, {result['precision']}, {result['date']}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out
