"""`mimkit compare --lanes N`: the cells a comparison still has to run, N at a time, each in its own worker process
with its share of the CPU threads (engine/lanes.py says why: small models leave cores idle). A cell's output goes to
OUT/cells/NAME.log instead of the console, which shows one line per finished cell. A failed cell stops the others
(they checkpoint, so the next run resumes them) and is reported as the one-lane run would report it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

from mimkit.config import Config


def cell_log(run_dir: Path) -> Path:
    """A cell's console output in lanes: beside its run directory (which the training itself creates and checks)."""
    return run_dir.with_name(run_dir.name + ".log")


def lane_cell(
    run: Callable, cell: Any, cfg: Config, run_dir: Path, threads: int | None, stop_file: str
) -> dict[str, Any]:
    """Run one cell (`run(cell, cfg, run_dir)`, compare's run_cell) in a lane's worker. Every outcome comes back as
    data: an exception would arrive without what decides the exit code."""
    import contextlib
    import traceback

    from mimkit.engine.lanes import start_lane
    from mimkit.errors import Interrupted, NonFiniteLossError, UserError

    failure: dict[str, Any] = {"ok": False, "exit_code": None, "errno": None, "filename": None}
    try:
        start_lane(threads)
        if Path(stop_file).exists():  # the comparison is stopping: start nothing new
            return {**failure, "kind": "stopped", "error": "the comparison stopped before this cell started"}
        t0 = time.time()
        log = cell_log(run_dir)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            try:
                return {"ok": True, "metrics": run(cell, cfg, run_dir), "seconds": time.time() - t0}
            except BaseException:
                traceback.print_exc()  # into the cell's log; the parent reports one line
                raise
    except UserError as err:
        return {**failure, "kind": "user", "error": str(err)}
    except NonFiniteLossError as err:
        return {**failure, "kind": "nonfinite", "error": str(err)}
    except Interrupted as stop:
        return {**failure, "kind": "interrupted", "error": str(stop), "exit_code": stop.exit_code}
    except KeyboardInterrupt:
        return {**failure, "kind": "interrupted", "error": "interrupted", "exit_code": 130}
    except MemoryError:
        return {**failure, "kind": "memory", "error": "out of memory"}
    except OSError as err:
        return {
            **failure,
            "kind": "os",
            "error": err.strerror or str(err),
            "errno": err.errno,
            "filename": err.filename,
        }
    except Exception as err:  # noqa: BLE001 - reported to the parent, which stops the comparison with it
        return {**failure, "kind": "internal", "error": f"{type(err).__name__}: {err}"}


def run_in_lanes(
    run: Callable, todo: list[tuple[int, Any, Config, Path]], lanes: int, out: Path, log: Callable[[str], None]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Run `todo` ((index, cell, config, run directory), in plan order) with `run` in `lanes` workers; yield (index,
    metrics) as each cell finishes. On a failed cell, an interrupt, or an error while the caller handles a finished
    cell, every running cell is stopped (SIGTERM: it checkpoints) before the error goes on."""
    from concurrent.futures.process import BrokenProcessPool

    from mimkit.engine.lanes import completed_or_stopped, lane_threads, spawn_pool, stop_workers

    lanes = min(lanes, len(todo))  # one cell left: all the threads for it
    threads = lane_threads(lanes)
    stop_file = out / ".stopping"
    stop_file.unlink(missing_ok=True)
    log(
        f"[compare] {len(todo)} cells to run, {lanes} at a time ({threads or 'all'} thread(s) each); each cell's "
        f"output in {out / 'cells'}/NAME.log"
    )
    t0, done = time.time(), 0
    try:
        with spawn_pool(lanes) as pool:
            futures = {
                pool.submit(lane_cell, run, cell, cfg, run_dir, threads, str(stop_file)): (i, cell, run_dir)
                for i, cell, cfg, run_dir in todo
            }
            try:
                for future in completed_or_stopped(futures, pool, stop_file):
                    i, cell, run_dir = futures[future]
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        raise RuntimeError(
                            "a lane's worker process died (killed, or out of memory): run the same command again to "
                            "resume (finished cells are kept), with fewer --lanes if memory is short"
                        ) from None
                    if not outcome["ok"]:
                        raise lane_failure(cell.name, outcome, cell_log(run_dir))
                    done += 1
                    elapsed = time.time() - t0
                    eta = elapsed / done * (len(todo) - done)
                    metrics = outcome["metrics"]
                    log(
                        f"[compare] {done}/{len(todo)} {cell.name}: {metrics['metric']} {metrics['value']:.4g} in "
                        f"{outcome['seconds']:.0f} s (elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)"
                    )
                    yield i, metrics
            except BaseException:  # a failure, Ctrl-C, or the caller's own error (GeneratorExit too): stop the lanes
                stop_workers(futures, pool, stop_file)
                raise
    finally:
        stop_file.unlink(missing_ok=True)


def lane_failure(name: str, outcome: dict[str, Any], log: Path) -> BaseException:
    """The exception the one-lane comparison would have raised for this cell, so the exit code is the same; the log
    comes first, as the CLI shows the first line of an unexpected error only."""
    from mimkit.errors import Interrupted, NonFiniteLossError, UserError

    where = f"cell {name} (its output: {log}): {outcome['error']}"
    kind = outcome["kind"]
    if kind == "user":
        return UserError(where)
    if kind == "nonfinite":
        return NonFiniteLossError(where)
    if kind == "interrupted":
        stop = Interrupted("signal", outcome["exit_code"], 0)
        stop.args = (f"{where}",)
        return stop
    if kind == "memory":
        return MemoryError(where)
    if kind == "os":
        return OSError(outcome["errno"], where, outcome["filename"])
    return RuntimeError(f"{where}; the traceback is in that log")
