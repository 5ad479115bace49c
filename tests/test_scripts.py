"""The measurement scripts still run: they are what a lent GPU machine executes, with no chance to fix them there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_step_parts_ab_times_every_part():
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "step_parts_ab.py"),
            "all",
            "--no-compile",
            "--passes",
            "1",
            "--reps",
            "1",
            "--vit-batch",
            "2",
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rows = [line for line in out.splitlines() if not line.startswith("#")]
    # loss: 2 methods x 2 shapes; embed: 2 shapes; gather: 3 shapes; attention: 2 shapes
    assert len(rows) == 4 + 2 + 3 + 2, out
    parts, attention = rows[:-2], rows[-2:]
    assert all(line.count("x)") == 2 for line in parts), out  # each row: the baseline and the new code, as ratios
    for line in attention:  # torch's pick first, then every SDPA backend that runs here (the math one always does)
        assert line.startswith("attention forward and backward") and "torch's pick" in line and "math" in line, out


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(SCRIPTS / script)], check=True)


def test_finetune_sweep_lists_its_runs_and_tables_finished_ones(tmp_path):
    import json

    script = [sys.executable, str(SCRIPTS / "fmnist_finetune_sweep.py")]
    listed = subprocess.run([*script, "list"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert listed and all(line.split()[1] in ("scratch",) or "/" in line.split()[1] for line in listed)
    name = listed[0].split()[0]
    (tmp_path / name).mkdir()
    result = {"final_heldout_top1": 81.234, "best_heldout_top1": 82.5, "seconds": 600.0}
    (tmp_path / name / "results.json").write_text(json.dumps(result))
    table = subprocess.run([*script, "table", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    rows = [line for line in table.splitlines() if line.startswith(f"| {name} ")]
    assert len(rows) == 1 and "| 81.23 | 82.50 | 10 |" in rows[0]
    bad = subprocess.run([*script, "run", str(tmp_path), "no-such-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown run" in bad.stderr
