"""Set a GPU `mimkit bench suite` result's time breakdowns against each row's timed step
(mimkit.bench.breakdown.Breakdown.on_timed_step), for results written before the suite did so itself; writes the
JSON, the Markdown report and the breakdown figure beside OUT.

    python scripts/rebase_breakdown.py bench-suite.json OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mimkit.bench.breakdown import Breakdown
from mimkit.bench.suite import markdown_report
from mimkit.viz.time_breakdown import plot_time_breakdown


def rebase(result: dict) -> dict:
    for row in result["rows"]:
        found = row.get("breakdown")
        if not found or "profiled_step_seconds" in found:  # none, or already set against the timed step
            continue
        kept = Breakdown(
            found["seconds_per_step"], found["step_seconds"], found["flops_per_step"], [tuple(t) for t in found["top"]]
        )
        row["breakdown"] = kept.on_timed_step(row["step_ms"] / 1e3).as_dict(result["peak_flops"])
    return result


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    result = rebase(json.loads(source.read_text()))
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown_report(result))
    plot_time_breakdown(result, out.with_name(out.stem + "-breakdown.png"))


if __name__ == "__main__":
    main()
