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


def test_transfer_study_keeps_cell_markers_and_restores_them_on_a_new_machine(tmp_path):
    """`keep` copies each finished compare cell's marker into the repository's results folder, with the tables
    rebuilt from every finished cell; `restore` puts the markers back where `mimkit compare` looks for them
    (cells/NAME/cell.json), without replacing a marker already there, so a fresh run directory skips the cells
    measured before."""
    import json

    out, kept = tmp_path / "study", tmp_path / "kept"
    cells = out / "compare-classification-60k" / "cells"
    for name, model, seed, value in (
        ("mae__knn__classification", "mae", 0, 78.0),
        ("mae__knn__classification__seed1", "mae", 1, 80.0),
    ):
        row = dict(model=model, source="", protocol="knn", task="classification", seed=seed, baseline=False)
        (cells / name).mkdir(parents=True)
        marker = {"config_hash": name, "row": {**row, "metric": "top1", "value": value}}
        (cells / name / "cell.json").write_text(json.dumps(marker))
    (cells / "mae__finetune__classification").mkdir()  # a cell still running: no marker, nothing kept
    (cells.parent / "results.csv").write_text("model\nmae\n")  # an earlier invocation's partial table
    script = ["bash", str(SCRIPTS / "fmnist_transfer_study.sh")]
    env = {**cli_env(), "KEEP": str(kept)}

    subprocess.run([*script, "keep", str(out)], env=env, check=True, capture_output=True, timeout=120)
    dest = kept / "compare-classification-60k"
    assert sorted(p.name for p in (dest / "cells").iterdir()) == [
        "mae__knn__classification.json",
        "mae__knn__classification__seed1.json",
    ]
    assert "| mae | 79.00 ± 1.41 |" in (dest / "results.md").read_text()  # both seeds, rebuilt from the markers
    assert (dest / "results.csv").read_text().count("\nmae,") == 2

    fresh = tmp_path / "fresh"
    (fresh / "compare-classification-60k" / "cells" / "mae__knn__classification").mkdir(parents=True)
    newer = fresh / "compare-classification-60k" / "cells" / "mae__knn__classification" / "cell.json"
    newer.write_text('{"config_hash": "measured here", "row": {}}')
    subprocess.run([*script, "restore", str(fresh)], env=env, check=True, capture_output=True, timeout=60)
    restored = fresh / "compare-classification-60k" / "cells" / "mae__knn__classification__seed1"
    assert (restored / "cell.json").read_text() == (dest / "cells" / f"{restored.name}.json").read_text()
    assert newer.read_text() == '{"config_hash": "measured here", "row": {}}'  # not replaced
    assert not (fresh / "compare-classification-60k" / "cells" / "mae__finetune__classification").exists()


def test_mae_long_compare_evaluates_kept_encoders_and_finetunes_only_the_finished_one(tmp_path):
    """fmnist_mae_long.sh compare hands the transfer study its kept encoders (every KEEP_EVERY steps, named in
    epochs; not the rolling last checkpoint) for the frozen protocols, and fine-tunes only a finished run's final
    encoder: on a new machine without the run directory, the exported one committed in ENCODERS."""
    import shutil

    shutil.copy(SCRIPTS / "fmnist_mae_long.sh", tmp_path)
    calls = tmp_path / "calls.txt"
    (tmp_path / "fmnist_transfer_study.sh").write_text(f'echo "$MODELS | $PROTOCOLS | $1 $2" >> {calls}\n')
    run = ["bash", str(tmp_path / "fmnist_mae_long.sh"), "compare", str(tmp_path / "long")]
    checkpoints = tmp_path / "long" / "pre" / "mae" / "checkpoints"
    for step in ("0005860", "0006000"):  # a kept encoder (25 epochs) and the rolling last one of a running job
        (checkpoints / f"step-{step}").mkdir(parents=True)
    env = {**cli_env(), "ENCODERS": str(tmp_path / "encoders")}
    subprocess.run(run, env=env, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    assert calls.read_text().splitlines() == [
        f"mae_ep25={checkpoints}/step-0005860 scratch | knn,linprobe | classification-60k runs/fmnist-transfer-v2"
    ]

    calls.unlink()
    shutil.rmtree(tmp_path / "long")
    (tmp_path / "encoders").mkdir()
    (tmp_path / "encoders" / "mae_ep100.safetensors").write_bytes(b"")
    subprocess.run(run, env=env, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    final = f"mae_ep100={tmp_path}/encoders/mae_ep100.safetensors"
    assert calls.read_text().splitlines() == [
        f"{final} scratch | knn,linprobe | classification-60k runs/fmnist-transfer-v2",
        f"{final} scratch | finetune | classification-60k runs/fmnist-transfer-v2",
    ]
