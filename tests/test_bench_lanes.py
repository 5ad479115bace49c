"""`mimkit bench lanes` (bench/lanes_bench.py): each lane count timed in that many processes that share the cores,
the totals and per-training speeds and their ratios to one lane, results.json, and clear errors (bad lane counts,
bad overrides before any process starts, a lane that dies without a result). Timings themselves are not asserted:
this machine is shared."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest

from conftest import cli_error
from mimkit.bench.lanes_bench import _collect, busy_cores, lanes_summary, parse_lanes, run_lanes_bench
from mimkit.config import ConfigError
from mimkit.engine.lanes import available_cores, lane_threads

TINY = ["model.name=mim_vit_femto", "data.img_size=16", "train.batch_size=8"]


def test_lane_counts_always_include_one_and_bad_ones_are_refused():
    assert parse_lanes("2") == [1, 2] and parse_lanes("4,2,2") == [1, 2, 4]
    for bad in ("0", "a", "", "1,-2"):
        with pytest.raises(ConfigError, match="give lane counts of 1 or more"):
            parse_lanes(bad)


def test_one_and_two_lanes_are_timed_together_and_compared_with_one_lane(tmp_path):
    lines = []
    res = run_lanes_bench("distill", TINY, [1, 2], steps=2, warmup=1, rounds=1, out=tmp_path, log=lines.append)
    one, two = res["rows"]
    cores = available_cores()
    assert (one["lanes"], one["threads_per_lane"]) == (1, cores)
    assert (two["lanes"], two["threads_per_lane"]) == (2, lane_threads(2))  # the split `compare --lanes 2` uses
    assert one["total_vs_one_lane"] == 1.0 and one["each_vs_one_lane"] == 1.0
    assert two["total_vs_one_lane"] == pytest.approx(two["total_img_per_s"] / one["total_img_per_s"])
    # the total is the lanes' img/s added up: two trainings, each at its own (median) rate
    assert two["total_img_per_s"] == pytest.approx(2 * two["per_lane_img_per_s"])
    assert 0.0 <= two["min_overlap"] <= 1.0 and res["best_lanes"] in (1, 2)
    assert res["model"] == "mim_vit_femto" and res["batch"] == 8
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == res["rows"]
    assert len(lines) == 2 and "2 lane(s)" in lines[1]
    busy = lanes_summary({**res, "busy_cores_at_start": 1.5})
    assert any("other work kept 1.5 cores busy" in line for line in busy)
    assert not any("busy" in line for line in lanes_summary({**res, "busy_cores_at_start": 0.1}))


def test_busy_cores_sees_a_spinning_process():
    """/proc/stat over a second: a process spinning on one core shows as about one busy core (more if the machine
    is busy anyway), the measure the warning uses."""
    if not os.path.exists("/proc/stat"):
        pytest.skip("Linux only")
    ctx = multiprocessing.get_context("spawn")
    spinning = ctx.Event()  # a spawned child can take seconds to start on a busy machine: measure once it spins
    spinner = ctx.Process(target=_spin, args=(4.0, spinning))
    spinner.start()
    try:
        assert spinning.wait(60)
        assert busy_cores(1.0) >= 0.6
    finally:
        spinner.join(10)


def _spin(seconds: float, spinning=None) -> None:
    if spinning is not None:
        spinning.set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_bad_input_is_refused_before_any_lane_starts(capsys):
    with pytest.raises(ConfigError, match="unknown"):
        run_lanes_bench("mae", ["train.no_such_key=1"], [1], steps=1, warmup=0, rounds=1)
    with pytest.raises(ConfigError, match="--steps 0"):
        run_lanes_bench("mae", TINY, [1], steps=0)
    err = cli_error(capsys, "bench", "lanes", "--lanes", "0")
    assert "--lanes '0'" in err


def test_a_lane_that_dies_without_a_result_is_an_error_not_a_hang():
    """One lane dies before the barrier; the other waits at it (for 600 s unless the barrier is broken)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    waiting = ctx.Process(target=barrier.wait, args=(600,))
    dead = ctx.Process(target=os._exit, args=(3,))
    waiting.start()
    dead.start()
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"ended without a result \(exit codes \[1, 3\]\)"):
        _collect(ctx.Queue(), [waiting, dead], barrier)
    assert time.monotonic() - start < 60  # the waiting lane was released, not left to its timeout
    for proc in (waiting, dead):
        proc.join(5)


def test_more_lanes_than_cores_are_refused():
    with pytest.raises(ConfigError, match="more than the .* cores this process may use"):
        run_lanes_bench("mae", TINY, [1, available_cores() + 1], steps=1)
