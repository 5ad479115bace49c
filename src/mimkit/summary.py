"""What a command prints when it ends: a few lines a person reads (what ran, the key numbers, where the files are),
with the full results in the run directory's JSON; `mimkit --json COMMAND ...` prints that JSON instead, for
scripts. Before this, commands ended by dumping their whole results dictionary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

JSON_OUTPUT = False  # set by the CLI's --json

# numbers worth a line, in this order, with how to print them
_NUMBERS = (
    ("step", "steps", "{:d}"),
    ("epochs", "epochs", "{:g}"),
    ("top1", "top-1", "{:.2f}%"),
    ("best_top1", "best top-1", "{:.2f}%"),
    ("top5", "top-5", "{:.2f}%"),
)


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def summary_lines(command: str, results: dict[str, Any], results_file: Path) -> list[str]:
    """The short report of a finished command (see the module docstring)."""
    head = f"{command} done"
    if isinstance(results.get("seconds"), (int, float)):
        head += f" in {duration(results['seconds'])}"
    lines = [head]
    for key, label, form in _NUMBERS:
        value = results.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"  {label:28s} {form.format(int(value) if form == '{:d}' else value)}")
    scores = {k: v for k, v in results.items() if k.startswith(("best_", "final_heldout_")) and k != "best_top1"}
    for key, value in scores.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"  {key.replace('_', ' '):28s} {value:.4g}")
    if results.get("init"):
        lines.append(f"  {'from':28s} {results['init']}")
    figures = [str(v) for v in results.values() if isinstance(v, str) and v.endswith((".png", ".html"))]
    if figures:
        lines.append(f"  {'figures':28s} {', '.join(figures)}")
    lines.append(f"  {'all results':28s} {results_file}")
    return lines


def show(results: Any, lines: list[str]) -> None:
    """Print a command's summary `lines`, or with --json its whole `results` as JSON: the one place that choice is
    made."""
    print(json.dumps(results, indent=1) if JSON_OUTPUT else "\n".join(lines))


def report(command: str, results: dict[str, Any], results_file: str | Path) -> None:
    """Print the summary of a training or probing command (or, with --json, the whole results as JSON)."""
    show(results, summary_lines(command, results, Path(results_file)))
