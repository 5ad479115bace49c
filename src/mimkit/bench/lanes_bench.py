"""`mimkit bench lanes`: is it faster to run N small trainings side by side (`compare --lanes N`, the sweep's
`--parallel N`), each with 1/N of the cores, than one after another with all of them? Each lane count is timed with
the same training step in that many fresh processes that start their timed steps together (a barrier after the
warm-up), in interleaved rounds with the median kept, so a busy spell of a shared machine hits every lane count
alike. The answer is the total img/s of the lanes against one process's, and what each training's own speed becomes
(a training in a lane takes longer; the lanes finish more of them per hour)."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from mimkit.config import ConfigError
from mimkit.engine.atomic import atomic_write_text
from mimkit.engine.lanes import available_cores, lane_threads

GROUPS = ("mae", "simmim", "distill", "finetune")
BUSY_CORES = 0.25  # other work using more than this many cores when the bench starts skews every row
BARRIER_TIMEOUT_S = 600  # a lane still building after this long is stuck: the others stop waiting


def parse_lanes(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; 1 is always measured (it is what the others are compared with)."""
    try:
        counts = [int(word) for word in text.split(",") if word.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError(f"--lanes '{text}': give lane counts of 1 or more separated by commas, e.g. --lanes 1,2")
    return sorted({1, *counts})


def _lane(group: str, overrides: list[str], threads: int, steps: int, warmup: int, barrier, results) -> None:
    """One lane in its own process: build the step, warm up, wait for the other lanes, time `steps` steps."""
    try:
        import torch

        from mimkit.bench.suite import build_teacher, group_config, mimkit_case
        from mimkit.engine.lanes import start_lane

        start_lane(threads)  # also for one lane: every core this process may use, not torch's guess
        cfg, teacher_cfg = group_config("tiny", group, "cpu", extra=overrides)
        teacher = build_teacher(teacher_cfg, torch.device("cpu")) if teacher_cfg is not None else None
        with tempfile.TemporaryDirectory(prefix="mimkit-lanes-") as tmp:
            timed = mimkit_case(cfg, torch.device("cpu"), False, False, Path(tmp), teacher)
            for _ in range(warmup):
                timed.step()
            barrier.wait(BARRIER_TIMEOUT_S)
            start = time.time()
            for _ in range(steps):
                timed.step()
            end = time.time()
            timed.close()
        results.put({"ok": True, "start": start, "end": end, "img_per_s": steps * cfg.train.batch_size / (end - start)})
    except Exception as err:  # noqa: BLE001 - reported by the parent, with where it was raised
        barrier.abort()
        frame = traceback.extract_tb(err.__traceback__)[-1]
        results.put({"ok": False, "error": f"{type(err).__name__}: {err}", "where": f"{frame.filename}:{frame.lineno}"})


def busy_cores(seconds: float = 1.0) -> float | None:
    """How many of the machine's cores other work keeps busy right now (/proc/stat over `seconds`; the load average
    lags by a minute, so a study paused just before the bench would still look busy); None off Linux."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values) - idle, sum(values)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def time_lanes(group: str, overrides: list[str], lanes: int, steps: int, warmup: int) -> dict[str, Any]:
    """One round at one lane count: `lanes` processes, each with the threads `compare --lanes` gives a lane, timed
    together."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: forking torch's thread pools can deadlock
    threads = lane_threads(lanes) or available_cores()  # the split `compare --lanes` uses; one lane: every core
    barrier, results = ctx.Barrier(lanes), ctx.Queue()
    procs = [
        ctx.Process(target=_lane, args=(group, overrides, threads, steps, warmup, barrier, results), daemon=True)
        for _ in range(lanes)
    ]
    for proc in procs:
        proc.start()
    try:
        reports = _collect(results, procs, barrier)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    failed = [r for r in reports if not r["ok"]]
    if failed:
        first = next((r for r in failed if "BrokenBarrierError" not in r["error"]), failed[0])
        raise ConfigError(f"bench lanes: a {group} lane failed: {first['error']} (at {first['where']})")
    together = min(r["end"] for r in reports) - max(r["start"] for r in reports)
    longest = max(r["end"] - r["start"] for r in reports)
    return {
        "per_lane_img_per_s": [r["img_per_s"] for r in reports],
        "total_img_per_s": sum(r["img_per_s"] for r in reports),
        "overlap": max(0.0, together) / longest,  # 1: every lane's timed window overlapped all the others'
        "threads_per_lane": threads,
    }


def _collect(results, procs, barrier=None) -> list[dict[str, Any]]:
    """Every lane's report; a lane that died without one (killed, out of memory) is an error, not a hang: the
    barrier is broken at once, so the lanes waiting at it stop too (a lane that reports exits 0)."""
    import queue

    reports: list[dict[str, Any]] = []
    while len(reports) < len(procs):
        try:
            reports.append(results.get(timeout=2))
        except queue.Empty:
            if barrier is not None and any(proc.exitcode not in (None, 0) for proc in procs):
                barrier.abort()
            if not any(proc.is_alive() for proc in procs) and results.empty():
                codes = [proc.exitcode for proc in procs]
                raise ConfigError(f"bench lanes: a lane process ended without a result (exit codes {codes})") from None
    return reports


def run_lanes_bench(
    group: str,
    overrides: list[str],
    lane_counts: list[int],
    steps: int = 20,
    warmup: int = 3,
    rounds: int = 3,
    out: str | Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Median over `rounds` interleaved rounds of each lane count's total and per-lane img/s, and their ratios to
    one lane with every core."""
    if group not in GROUPS:
        raise ConfigError(f"bench lanes: --group {group!r} is not one of {', '.join(GROUPS)}")
    if steps < 1 or warmup < 0 or rounds < 1:
        raise ConfigError(f"bench lanes: --steps {steps} and --rounds {rounds} must be 1 or more, --warmup 0 or more")
    from mimkit.bench.suite import group_config

    cfg, _ = group_config("tiny", group, "cpu", extra=overrides)  # bad overrides fail here, before any process
    cores = available_cores()
    if max(lane_counts) > cores:
        raise ConfigError(
            f"bench lanes: --lanes {max(lane_counts)} is more than the {cores} cores this process may use: each lane "
            "needs a core of its own (more only oversubscribes them)"
        )
    busy = busy_cores()
    measured: dict[int, list[dict[str, Any]]] = {n: [] for n in lane_counts}
    for r in range(rounds):
        for n in lane_counts if r % 2 == 0 else lane_counts[::-1]:  # a drift over a round hits every count alike
            row = time_lanes(group, overrides, n, steps, warmup)
            measured[n].append(row)
            log(
                f"[bench lanes] round {r + 1}/{rounds}: {n} lane(s) of {row['threads_per_lane']} thread(s): "
                f"{row['total_img_per_s']:,.0f} img/s in all"
            )
    rows = []
    for n in lane_counts:
        totals = [m["total_img_per_s"] for m in measured[n]]
        each = [statistics.mean(m["per_lane_img_per_s"]) for m in measured[n]]
        rows.append(
            {
                "lanes": n,
                "threads_per_lane": measured[n][0]["threads_per_lane"],
                "total_img_per_s": statistics.median(totals),
                "total_spread": [min(totals), max(totals)],
                "per_lane_img_per_s": statistics.median(each),
                "min_overlap": min(m["overlap"] for m in measured[n]),
            }
        )
    alone = rows[0]  # one lane: lane_counts starts with 1
    for row in rows:
        row["total_vs_one_lane"] = row["total_img_per_s"] / alone["total_img_per_s"]
        row["each_vs_one_lane"] = row["per_lane_img_per_s"] / alone["per_lane_img_per_s"]
    results = {
        "group": group,
        "overrides": overrides,
        "model": cfg.model.name,
        "img_size": cfg.data.img_size,
        "batch": cfg.train.batch_size,
        "cores": cores,
        "busy_cores_at_start": busy,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "rows": rows,
        "best_lanes": max(rows, key=lambda row: row["total_img_per_s"])["lanes"],
    }
    if out:
        results["written_to"] = str(Path(out) / "results.json")
        atomic_write_text(results["written_to"], json.dumps(results, indent=1))
    return results


def lanes_summary(results: dict[str, Any]) -> list[str]:
    """What `mimkit bench lanes` prints: a line per lane count and the answer."""
    lines = [
        f"{results['group']} {results['model']} at {results['img_size']} px, batch {results['batch']}, "
        f"{results['cores']} cores, median of {results['rounds']} rounds of {results['steps']} timed steps per lane"
    ]
    for row in results["rows"]:
        low, high = row["total_spread"]
        lines.append(
            f"  {row['lanes']} lane(s) x {row['threads_per_lane']} thread(s): {row['total_img_per_s']:9,.0f} img/s in "
            f"all ({low:,.0f}-{high:,.0f}), {row['total_vs_one_lane']:.2f}x one lane; each training "
            f"{row['per_lane_img_per_s']:,.0f} img/s ({row['each_vs_one_lane']:.2f}x alone)"
            + ("" if row["min_overlap"] > 0.8 else f"; lanes overlapped only {row['min_overlap']:.0%} of their time")
        )
    busy = results.get("busy_cores_at_start")  # machine-wide: under taskset, work on other cores counts too
    if busy is not None and busy >= BUSY_CORES:
        lines.append(
            f"  warning: other work kept {busy:.1f} cores busy when the bench started: it shares these cores, and "
            "one lane's threads suffer most from it (they wait for each other); measure on an idle machine"
        )
    best = next(row for row in results["rows"] if row["lanes"] == results["best_lanes"])
    lines.append(
        f"  most images per hour: {best['lanes']} lane(s) ({best['total_vs_one_lane']:.2f}x one lane); "
        "pass it as `compare --lanes` or the sweep's `--parallel`"
    )
    return lines
