"""`mimkit compare --lanes N` (eval/cell_lanes.py): the cells run N at a time in worker processes and give the same
rows, in the same order, as one lane; a re-run skips them; each cell's output is in its log; a failing cell stops
the comparison with its own error and exit code, naming the cell and its log."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import TINY, cli_env, cli_error, run_cli, sets


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "mae"
    run_cli("pretrain", "--config", "mae_fmnist_tiny", "--out", str(out), *sets([*TINY, "train.steps=4"]), check=True)
    return out


FINETUNE = ("train.epochs=null", "train.steps=2", "train.batch_size=16", "train.eval_samples=16")


def compare_args(out, *inits: str) -> list[str]:
    """Two protocols x two seeds per model, tiny: 4 cells per model."""
    args = ["compare"]
    for init in inits:
        args += ["--init", init]
    return [
        *args,
        "--out",
        str(out),
        "--protocols",
        "knn,finetune",
        "--seeds",
        "2",
        "--no-baselines",
        *sets(["data.name=synthetic", "data.synthetic_size=64", "model.name=mim_vit_femto"]),
        *[w for s in FINETUNE for w in ("--set-finetune", s)],
    ]


def run_with_threads(*args: str) -> str:
    """The CLI with the thread count a lane gets (engine/lanes.py), so one lane and two compute alike."""
    import subprocess
    import sys

    from conftest import ROOT

    env = {**cli_env(), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2))}
    proc = subprocess.run(
        [sys.executable, "-m", "mimkit", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_two_lanes_give_the_one_lane_rows_in_plan_order_and_resume(tmp_path, mae_run):
    inits = (str(mae_run), "rand=scratch")
    one = run_with_threads(*compare_args(tmp_path / "one", *inits))
    two = run_with_threads(*compare_args(tmp_path / "two", *inits), "--lanes", "2")
    assert one.count("running") == 8 and "at a time" not in one
    assert "8 cells to run, 2 at a time" in two and two.count("[compare] ") == 10  # skipped count, plan, 8 finished
    assert "8/8 " in two and "ETA" in two
    rows_one = json.loads((tmp_path / "one/results.json").read_text())
    rows_two = json.loads((tmp_path / "two/results.json").read_text())
    key = ("model", "protocol", "task", "seed")
    assert [tuple(r[k] for k in key) for r in rows_two] == [tuple(r[k] for k in key) for r in rows_one]
    for a, b in zip(rows_one, rows_two):  # same machine, same thread count per training: the same numbers
        assert b["value"] == pytest.approx(a["value"], abs=1e-6), (a, b)
    assert (tmp_path / "two/results.md").read_text() == (tmp_path / "one/results.md").read_text()
    log = (tmp_path / "two/cells/mae__finetune__classification__seed1.log").read_text()
    assert "step 2/2" in log or "final_heldout" in log  # the cell's own output, not the console's

    stamp = (tmp_path / "two/cells/mae__finetune__classification/results.json").stat().st_mtime_ns
    again = run_with_threads(*compare_args(tmp_path / "two", *inits), "--lanes", "2")
    assert "8 of 8 cells done before, skipped" in again and "at a time" not in again
    assert (tmp_path / "two/cells/mae__finetune__classification/results.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "two/results.json").read_text()) == rows_two


def test_a_failing_cell_stops_the_lanes_with_its_own_error(tmp_path, mae_run, capsys):
    """A run whose weights file is corrupt passes the plan (its config is readable) and fails in its lane: the
    comparison exits 2 with the loader's message, the cell's name and its log, as one lane would."""
    broken = tmp_path / "broken"
    shutil.copytree(mae_run, broken)
    weights = broken / "checkpoints/last/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    err = cli_error(capsys, *compare_args(tmp_path / "cmp", f"bad={broken}"), "--protocols", "knn", "--lanes", "2")
    cell = re.search(r"cell (bad__knn__classification(__seed1)?) \(its output: (\S+)\): ", err)  # seeds race
    assert cell and cell[3].endswith(f"cmp/cells/{cell[1]}.log") and "model.safetensors" in err
    assert "Traceback" in Path(cell[3]).read_text() and "Traceback" not in err  # the log has it, the console not
    assert not list((tmp_path / "cmp/cells").glob("*/cell.json"))  # no cell recorded


def test_lanes_must_be_at_least_one(tmp_path, capsys):
    err = cli_error(capsys, "compare", "--init", "scratch", "--out", str(tmp_path / "c"), "--lanes", "0")
    assert "--lanes 0 must be at least 1" in err
