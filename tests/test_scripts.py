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
