"""`mimkit sweep`: expand the grid, say what is done and what is left, run what is left, collect results.csv."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from mimkit.engine.atomic import atomic_write_text
from mimkit.errors import ConfigError
from mimkit.scaling.grid import Sweep, load_sweep
from mimkit.scaling.runner import LAUNCHERS, pending_commands, run_local, run_status, run_submitit, shell_line


def collect(sweep: Sweep, say: Callable[[str], None] = print) -> Path | None:
    """Records of every pretrained run -> DIR/results.csv + DIR/curves.json (None when no run has finished)."""
    from mimkit.scaling.record import run_record, write_results  # torch (FLOP counts): not for a grid's errors

    records = []
    for run in sweep.runs:
        if run_status(run) in ("done", "finetune"):
            try:
                records.append(run_record(run.run_dir, run.axes, run.finetune_dir))
            except (OSError, KeyError, ValueError) as err:
                say(f"[sweep] {run.run_id}: cannot read its results ({err}); left out of results.csv")
    if not records:
        return None
    return write_results(records, sweep.out)


def select_runs(runs: list, patterns: list[str]) -> list:
    """The runs whose directory name matches one of the shell patterns (e.g. 'mim_vit_pico-*'), in grid order."""
    import fnmatch

    chosen = [run for run in runs if any(fnmatch.fnmatchcase(run.run_id, p) for p in patterns)]
    if not chosen:
        names = ", ".join(run.run_id for run in runs[:6]) + (", ..." if len(runs) > 6 else "")
        raise ConfigError(f"--only {' '.join(patterns)}: matches none of the sweep's runs ({names})")
    return chosen


def run_sweep(
    config: str,
    out: str,
    parallel: int | None = None,
    launcher: str = "local",
    dry_run: bool = False,
    finetune: bool | None = None,
    wait: bool = True,
    say: Callable[[str], None] = print,
    sets: list[str] | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or, with `dry_run`, print) what is left of a sweep; returns counts, failures and the results path.
    `sets` add config overrides to every run (`sweep --set`); `only` keeps the runs whose directory name matches one
    of its shell patterns (`sweep --only`); results.csv still collects every finished run of the sweep."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {launcher}: expected one of {', '.join(LAUNCHERS)}")
    sweep = load_sweep(config, out, sets)
    selected = select_runs(sweep.runs, only) if only else sweep.runs
    if finetune is False:
        sweep.finetune = None
        for run in sweep.runs:
            run.finetune_dir = None
    parallel = parallel or sweep.parallel
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel}: must be at least 1")
    states = Counter(run_status(run) for run in selected)
    todo = [run for run in selected if run_status(run) != "done"]
    say(
        f"[sweep] {len(selected)} runs"
        + (f" (of {len(sweep.runs)}, --only {' '.join(only)})" if only else "")
        + f": {states['done']} done, {states['finetune']} to fine-tune, "
        f"{states['resume']} to resume, {states['new']} new"
        + (f"; fine-tune with {sweep.finetune.config}" if sweep.finetune else "")
    )
    if dry_run:
        for run in todo:
            for args in pending_commands(sweep, run):
                print(shell_line(args))
        return {"runs": len(selected), "todo": len(todo), "dry_run": True}
    sweep.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        sweep.out / "sweep.json",
        json.dumps(
            {
                "config": str(config),
                "base": sweep.base,
                "runs": {r.run_id: {"axes": r.axes, "overrides": r.overrides} for r in sweep.runs},
                "finetune": None if sweep.finetune is None else vars(sweep.finetune),
            },
            indent=1,
        ),
    )
    if launcher == "local":
        failed = run_local(sweep, todo, parallel, say)
    else:
        failed = run_submitit(sweep, todo, launcher, wait, say)
    results = collect(sweep, say)
    finished = sum(run_status(run) == "done" for run in sweep.runs)
    say(
        f"[sweep] {finished}/{len(sweep.runs)} runs done"
        + (f"; results in {results}" if results else "")
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return {"runs": len(sweep.runs), "done": finished, "failed": failed, "results": str(results) if results else None}
