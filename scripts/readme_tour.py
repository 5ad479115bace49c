"""Run the README's short tour as written, line by line, and time each line (issue 22: the tour runs as written, each
line under 2 minutes on 2 cores).

    python scripts/readme_tour.py list                  # the commands, as the README has them
    python scripts/readme_tour.py run WORKDIR [--limit S] [--from N] [--only N,N]   # run them in WORKDIR

`run` prints a Markdown table (line, seconds, exit status) and writes it to WORKDIR/tour.md. Each command runs
with the repository's .venv first on PATH, from WORKDIR, under a time limit (default 300 s: a line over 120 s is
reported as too slow, one over the limit as killed). The tests parse every tour line with mimkit's own parser
(tests/test_readme_tour.py), so a stale flag fails the suite without running anything.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOUR_HEADING = "## A short tour"
SLOW_S = 120  # the bar for one line on 2 cores


def tour_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The shell commands of the tour's first ```bash block: continuation lines joined, comments and the
    `source .venv/bin/activate` line dropped."""
    text = readme.read_text()
    opening = text.index("```bash", text.index(TOUR_HEADING)) + len("```bash")
    block = text[opening : text.index("```", opening)]
    commands, pending = [], ""
    for raw in block.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        words = shlex.split(line, comments=True)
        if not words or words[0] == "source":
            continue
        commands.append(shlex.join(words))
    return commands


def run_tour(workdir: Path, limit: float, first: int = 1, only: set[int] | None = None) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    rows, worst = [], 0
    for number, command in enumerate(tour_commands(), 1):
        if number < first or (only and number not in only):
            continue
        print(f"[tour] {number}: {command}", flush=True)
        t0 = time.time()
        try:
            done = subprocess.run(
                ["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True, timeout=limit
            )
            code, tail = done.returncode, (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
        except subprocess.TimeoutExpired:
            code, tail = "killed", [f"over the {limit:.0f} s limit"]
        seconds = time.time() - t0
        verdict = "ok" if code == 0 and seconds <= SLOW_S else ("slow" if code == 0 else "FAILED")
        worst = max(worst, 0 if verdict == "ok" else 1)
        rows.append(f"| {number} | `{command}` | {seconds:.0f} | {code} | {verdict} | {tail[0][:100]} |")
        print(f"[tour] {number}: {verdict} in {seconds:.0f} s (exit {code})", flush=True)
    table = "\n".join(["| # | command | seconds | exit | verdict | last line |", "|---|---|---|---|---|---|", *rows])
    (workdir / "tour.md").write_text(table + "\n")
    print(table)
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the tour's commands")
    run = sub.add_parser("run", help="run the tour in WORKDIR")
    run.add_argument("workdir", type=Path)
    run.add_argument("--limit", type=float, default=300.0, help="seconds before a line is killed (default 300)")
    run.add_argument("--from", dest="first", type=int, default=1, help="start at this line (default 1)")
    run.add_argument("--only", default="", help="comma-separated line numbers to run (the others' outputs must exist)")
    args = parser.parse_args()
    if args.command == "list":
        for number, command in enumerate(tour_commands(), 1):
            print(f"{number:3d}  {command}")
        return 0
    only = {int(n) for n in args.only.split(",") if n.strip()}
    return run_tour(args.workdir.resolve(), args.limit, args.first, only)


if __name__ == "__main__":
    sys.exit(main())
