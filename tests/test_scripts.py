"""The measurement scripts still run: they are what a lent GPU machine executes, with no chance to fix them there."""

from __future__ import annotations

import json
import shutil
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


@pytest.mark.parametrize("script", sorted(str(p.relative_to(SCRIPTS)) for p in SCRIPTS.rglob("*.sh")))
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
    shutil.copytree(SCRIPTS / "lib", tmp_path / "lib")
    calls = tmp_path / "calls.txt"
    (tmp_path / "fmnist_transfer_study.sh").write_text(f'echo "$MODELS | $PROTOCOLS | $1 $2" >> {calls}\n')
    run = ["bash", str(tmp_path / "fmnist_mae_long.sh"), "compare", str(tmp_path / "long")]
    checkpoints = tmp_path / "long" / "pre" / "mae" / "checkpoints"
    for step in ("0002340", "0003000"):  # a kept encoder (10 epochs) and the rolling last one of a running job
        (checkpoints / f"step-{step}").mkdir(parents=True)
    env = {**cli_env(), "ENCODERS": str(tmp_path / "encoders")}
    subprocess.run(run, env=env, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    assert calls.read_text().splitlines() == [
        f"mae_ep10={checkpoints}/step-0002340 scratch | knn,linprobe | classification-60k runs/fmnist-transfer-v2"
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


def test_mae_long_second_seed_fine_tunes_its_chosen_lengths_and_ds2_tables_every_finished_run(tmp_path):
    """PRE_SEED=1 pretrains into pre-s1 with seed 1 and names its encoders mae_s1_epN; `length` fine-tunes the kept
    encoders at LENGTHS epochs and the final one (exported once), LENGTH_SEEDS seeds; `ds2` hands every finished run
    with its final encoder's name to `mimkit scaling kept --merge`, then analyses the kept table."""
    import shutil

    shutil.copy(SCRIPTS / "fmnist_mae_long.sh", tmp_path)
    shutil.copytree(SCRIPTS / "lib", tmp_path / "lib")
    env, calls = _stand_in_mimkit(tmp_path)
    transfer = tmp_path / "transfer.txt"
    (tmp_path / "fmnist_transfer_study.sh").write_text(f'echo "$MODELS | $PROTOCOLS | $SEEDS" >> {transfer}\n')
    out = tmp_path / "long"
    env = {**env, "ENCODERS": str(tmp_path / "encoders"), "PRE_SEED": "1", "DS2_KEEP": str(tmp_path / "ds2")}

    def run(stage: str, **extra: str) -> subprocess.CompletedProcess:
        script = ["bash", str(tmp_path / "fmnist_mae_long.sh"), stage, str(out)]
        return subprocess.run(script, env={**env, **extra}, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert run("pretrain").returncode == 0
    pre = out / "pre-s1" / "mae"
    assert f"pretrain --config mae_fmnist_tiny --out {pre} " in calls.read_text()
    assert "train.keep_every=2340 " in calls.read_text() and calls.read_text().rstrip().endswith("seed=1")
    assert run("length").returncode == 2  # the stand-in's results.json names no step: not a finished run
    (pre / "results.json").write_text('{\n "step": 23400,\n "epochs": 99.84\n}')
    for step in (2340, 4680, 11700, 23400):  # 10, 20, 50 epochs, and the final step kept as a multiple too
        (pre / "checkpoints" / f"step-{step:07d}").mkdir(parents=True)
    calls.unlink()
    transfer.unlink(missing_ok=True)
    assert run("length", LENGTHS="10 50").returncode == 0
    assert f"export {pre} --out {tmp_path}/encoders/mae_s1_ep100.safetensors" in calls.read_text()
    kept = f"{pre}/checkpoints/step-"
    final = f"mae_s1_ep100={tmp_path}/encoders/mae_s1_ep100.safetensors"
    assert transfer.read_text().splitlines() == [
        f"mae_s1_ep10={kept}0002340 mae_s1_ep50={kept}0011700 {final} | finetune | 1"
    ]

    (out / "pre" / "mae").mkdir(parents=True)
    (out / "pre" / "mae" / "results.json").write_text('{"step": 23400}')
    (tmp_path / "encoders" / "mae_ep100.safetensors").write_bytes(b"")  # seed 0's, committed: not exported again
    (tmp_path / "encoders" / "mae_s1_ep100.safetensors").write_bytes(b"")
    (out / "pre-s1.bak" / "mae").mkdir(parents=True)  # a copy someone left: not a seed's folder
    (out / "pre-s1.bak" / "mae" / "results.json").write_text('{"step": 23400}')
    tables = tmp_path / "tables"
    tables.mkdir()
    header = "model,source,protocol,task,seed,baseline,metric,value,top1,top5,best_top1\n"
    (tables / "results.csv").write_text(header + "mae_ep100,x,finetune,classification,0,False,top1,91.8,91.8,99.9,\n")
    calls.unlink()
    waiting = run("ds2", TABLES=str(tables))  # seed 1's final encoder not fine-tuned yet: it waits, named
    assert waiting.returncode == 0 and "mae_s1_ep100 has no fine-tuned score" in waiting.stderr
    assert "pre-s1.bak/mae: not a pretraining seed's folder" in waiting.stderr
    assert f"scaling kept {out}/pre/mae=mae_ep100 --compare {tables} " in calls.read_text()
    with open(tables / "results.csv", "a") as fh:
        fh.write("mae_s1_ep100,y,finetune,classification,0,False,top1,91.5,91.5,99.9,\n")
    calls.unlink()
    assert run("ds2", TABLES=str(tables)).returncode == 0
    kept_call, analyze_call = calls.read_text().splitlines()
    assert kept_call.endswith(
        f"scaling kept {out}/pre/mae=mae_ep100 {pre}=mae_s1_ep100 --compare {tables} --out {tmp_path}/ds2 --merge"
    )
    assert analyze_call.endswith(
        f"scaling analyze {tmp_path}/ds2/results.csv --out {tmp_path}/ds2/analysis --baselines mim_vit_pico={tables}"
    )
    assert run("bogus").returncode == 2


def _stand_in_mimkit(tmp_path: Path) -> tuple[dict, Path]:
    """A `python` first on PATH that logs each `-m mimkit` command (and OMP_NUM_THREADS, when set, in threads.txt)
    and marks a pretraining or distillation run finished (results.json in --out), so a study script's plan is
    checked without training anything; a command containing FAIL_ON fails."""
    import os

    calls = tmp_path / "calls.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {calls}\n'
        f'[ -z "${{OMP_NUM_THREADS:-}}" ] || echo "$OMP_NUM_THREADS" >> {tmp_path / "threads.txt"}\n'
        'case "$*" in *"${FAIL_ON:-@none@}"*) exit 3 ;; esac\n'
        'case "$3" in distill|pretrain) while [ $# -gt 0 ]; do [ "$1" = --out ] && mkdir -p "$2" && '
        'echo {} > "$2/results.json"; shift; done ;; '
        'export) : > "$6" && : > "$6.json" && echo "wrote $6 (+ .json)" ;; esac\n'
    )
    fake.chmod(0o755)
    env = cli_env()
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', os.environ['PATH'])}"}, calls


def test_distill_femto_study_plans_every_student_resumes_and_evaluates_the_teacher_frozen_only(tmp_path):
    """fmnist_distill_femto.sh distils each target (qk+vv also from masked input, from an intermediate teacher block
    and sequentially through a mid-sized student) and MAE femtos with the same and a longer image budget, skips
    finished runs when started again, refuses a missing teacher by name, and compares the femtos frozen next to the
    teacher but fine-tunes only the femtos and baselines."""
    env, calls = _stand_in_mimkit(tmp_path)
    script = ["bash", str(SCRIPTS / "fmnist_distill_femto.sh")]
    out = tmp_path / "study"
    teacher = tmp_path / "mae_ep100.safetensors"
    env = {**env, "TEACHER": str(teacher), "KEEP": str(tmp_path / "kept"), "EPOCHS": "3"}

    missing = subprocess.run([*script, "pretrain", str(out)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and f"no teacher at {teacher}" in missing.stderr and not calls.exists()

    teacher.write_bytes(b"")
    subprocess.run([*script, "pretrain", str(out)], env=env, cwd=tmp_path, check=True, capture_output=True)
    lines = calls.read_text().splitlines()
    distills = [line for line in lines if line.startswith("-m mimkit distill")]
    assert len(distills) == 9 and all("--epochs 3 " in d and "train.warmup_epochs=0.2 " in d for d in distills)
    by_student = {d.split("--out ")[1].split()[0].rsplit("/", 1)[1]: d for d in distills}
    assert list(by_student)[0] == "seq_mid"  # before the student it teaches
    direct = [d for name, d in by_student.items() if name not in ("seq", "seq_mid")]
    assert all(f"--teacher {teacher} --student mim_vit_femto " in d for d in direct)
    assert "--student mim_vit_pico --set model.embed_dim=72 --set model.depth=4 " in by_student["seq_mid"]
    assert f"--teacher {out}/students/seq_mid --student mim_vit_femto " in by_student["seq"]
    assert "distill.teacher_layer=4 " in by_student["qkvv_layer4"] and "teacher_layer" not in by_student["qkvv"]
    assert "distill.targets=qk+vv" in by_student["qkvv"] and "mask_ratio" not in by_student["qkvv"]
    masked = by_student["qkvv_masked"]
    assert "distill.targets=qk+vv" in masked and "distill.mask_ratio=0.5" in masked
    assert "distill.targets=feature" in by_student["feature"]
    mae, mae_long = lines[-2:]  # the students' image budget, then MAE's longer one; MAE's 5% warm-up each
    assert mae.startswith("-m mimkit pretrain --config mae_fmnist_tiny") and "model.name=mim_vit_femto" in mae
    assert f"--out {out}/mae-student --epochs 3 " in mae and "train.warmup_epochs=0.15 " in mae
    assert f"--out {out}/mae-student-long --epochs 50 " in mae_long and "train.warmup_epochs=2.5 " in mae_long

    calls.unlink()
    subprocess.run([*script, "pretrain", str(out)], env=env, cwd=tmp_path, check=True, capture_output=True)
    assert not calls.exists()  # every run finished: nothing trained again

    fresh = tmp_path / "subset"  # MODELS trains a subset, in the stage's order, whatever order it is written in
    subset = {**env, "MODELS": "mae_long qk seq_mid"}
    subprocess.run([*script, "pretrain", str(fresh)], env=subset, cwd=tmp_path, check=True, capture_output=True)
    trained = [line.split("--out ")[1].split()[0].rsplit("/", 1)[1] for line in calls.read_text().splitlines()]
    assert trained == ["seq_mid", "qk", "mae-student-long"]
    calls.unlink()
    early = {**env, "MODELS": "seq"}  # seq_mid, its teacher, has not finished in this folder
    refused = subprocess.run([*script, "pretrain", str(tmp_path / "s")], env=early, cwd=tmp_path, capture_output=True)
    assert refused.returncode == 2 and b"seq is taught by seq_mid" in refused.stderr and not calls.exists()
    unknown = {**env, "MODELS": "qk dino"}
    bad = subprocess.run([*script, "pretrain", str(fresh)], env=unknown, cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown model 'dino'" in bad.stderr and not calls.exists()

    subprocess.run([*script, "compare", str(out)], env=env, cwd=tmp_path, check=True, capture_output=True)
    lines = calls.read_text().splitlines()
    exports = [line.split()[3] for line in lines if line.startswith("-m mimkit export ")]
    # each compared femto's final encoder exported once into KEEP/encoders (seq_mid is not compared)
    assert sorted(exports) == sorted(
        [
            *(f"{out}/students/{s}" for s in by_student if s != "seq_mid"),
            f"{out}/mae-student",
            f"{out}/mae-student-long",
        ]
    )
    frozen, tuned = [line for line in lines if line.startswith("-m mimkit compare")]
    assert frozen.startswith("-m mimkit compare --lanes 1 ") and tuned.startswith("-m mimkit compare --lanes 1 ")
    assert "--protocols knn,linprobe " in frozen and f"--init teacher={teacher}" in frozen
    assert "--protocols finetune " in tuned and "teacher" not in tuned
    enc = tmp_path / "kept/encoders"
    for command in (frozen, tuned):
        assert f"--init scratch=scratch:{enc}/mae.safetensors " in command and "--seeds 3 " in command
        assert f"--init qkvv_masked={enc}/qkvv_masked.safetensors " in command and "model.name=mim_vit_femto" in command
        assert (
            f"--init mae_long={enc}/mae_long.safetensors " in command
            and f"--init seq={enc}/seq.safetensors " in command
        )
        assert "seq_mid" not in command  # not a femto

    assert (enc / "qk.safetensors.from").read_text().split()[1] == f"{out}/students/qk"
    calls.unlink()
    (out / "students/qk/results.json").write_text('{"retrained": 1}')  # not the run the kept file came from
    other = subprocess.run(
        [*script, "compare", str(out)], env={**env, "MODELS": "qk"}, cwd=tmp_path, capture_output=True, text=True
    )
    assert other.returncode == 2 and f"qk: {enc}/qk.safetensors was exported from another run" in other.stderr
    assert not calls.exists()  # never compared in its place
    subset = {**env, "MODELS": "qkvv mae", "PROTOCOLS": "knn", "LANES": "3"}  # 3 compare lanes (pretrain: 1 or 2)
    shutil.rmtree(out)  # a new machine: no run directory, the kept encoders are what the comparison reads
    subprocess.run([*script, "compare", str(out)], env=subset, cwd=tmp_path, check=True, capture_output=True)
    (only,) = calls.read_text().splitlines()
    assert "--protocols knn " in only and f"--init mae={enc}/mae.safetensors " in only and "/qk.safet" not in only
    assert "--lanes 3 " in only
    assert "mae_long" not in only
    (enc / "qk.safetensors").unlink()  # neither kept nor trained here: refused by name, nothing compared
    calls.unlink()
    gone = subprocess.run(
        [*script, "compare", str(out)], env={**env, "MODELS": "qk"}, cwd=tmp_path, capture_output=True, text=True
    )
    assert gone.returncode == 2 and f"qk: {out}/students/qk has not finished" in gone.stderr
    assert not calls.exists()
    bad = subprocess.run(
        [*script, "compare", str(out)], env={**env, "MODELS": "dino"}, cwd=tmp_path, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown model 'dino'" in bad.stderr


def test_distill_femto_replicas_train_with_their_seed_apart_and_join_the_comparison_by_name(tmp_path):
    """REPLICA=N trains REPLICATED (T1's three by default; seq after its own seq_mid) with seed N into OUT/replica-N;
    REPLICAS="1 2" compares them as NAME_rN (REPLICA_SEEDS evaluation seeds, no second set of baselines), each
    exported into KEEP/encoders; a replica not trained is refused by name, a bad replica number too."""
    env, calls = _stand_in_mimkit(tmp_path)
    script = ["bash", str(SCRIPTS / "fmnist_distill_femto.sh")]
    out = tmp_path / "study"
    teacher = tmp_path / "mae_ep100.safetensors"
    teacher.write_bytes(b"")
    env = {**env, "TEACHER": str(teacher), "KEEP": str(tmp_path / "kept"), "EPOCHS": "3"}

    def run(stage: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*script, stage, str(out)], env={**env, **extra}, check=check, cwd=tmp_path, capture_output=True, text=True
        )

    run("pretrain", REPLICA="1")
    lines = calls.read_text().splitlines()
    outs = [line.split("--out ")[1].split()[0] for line in lines]
    assert outs == [f"{out}/replica-1/students/{s}" for s in ("qkvv", "cls", "feature")]
    assert all("--set seed=1 " in line for line in lines)
    calls.unlink()
    run("pretrain", REPLICA="2", REPLICATED="qkvv seq")
    lines = calls.read_text().splitlines()
    outs = [line.split("--out ")[1].split()[0].rsplit("/", 1)[1] for line in lines]
    assert outs == ["seq_mid", "qkvv", "seq"] and all("--set seed=2 " in line for line in lines)
    assert f"--teacher {out}/replica-2/students/seq_mid " in lines[2]  # its own replica's seq_mid
    bad = run("pretrain", check=False, REPLICA="x")
    assert bad.returncode == 2 and "REPLICA=x: a replica number" in bad.stderr

    run("pretrain")  # the first runs
    calls.unlink()
    run("compare", REPLICAS="1", PROTOCOLS="finetune")
    lines = calls.read_text().splitlines()
    first, replicas = [line for line in lines if line.startswith("-m mimkit compare")]
    enc = tmp_path / "kept/encoders"
    assert "--seeds 3 " in first and "qkvv_r1" not in first
    assert [w for w in replicas.split() if w.endswith(".safetensors")] == [
        f"{n}_r1={enc}/{n}_r1.safetensors" for n in ("qkvv", "cls", "feature")
    ]
    assert "--seeds 1 " in replicas and "--no-baselines" in replicas and "--protocols finetune " in replicas
    assert (enc / "cls_r1.safetensors.from").read_text().split()[1] == f"{out}/replica-1/students/cls"
    calls.unlink()
    # MODELS picks among the replicated models (mae has no replica: not asked for), each replica number once
    run("compare", REPLICAS="1 1", MODELS="qkvv mae", PROTOCOLS="finetune")
    *_, replicas = [line for line in calls.read_text().splitlines() if line.startswith("-m mimkit compare")]
    assert [w.split("=")[0] for w in replicas.split() if w.endswith(".safetensors")] == ["qkvv_r1"]
    # the keep stage pools each femto with its kept replicas (whatever REPLICAS says now) and contrasts the pools
    cells = out / "compare-classification-60k/cells"
    for model in ("qkvv", "qkvv_r1", "cls", "cls_r1", "feature"):
        (cells / f"{model}__finetune__classification").mkdir(parents=True, exist_ok=True)
        (cells / f"{model}__finetune__classification/cell.json").write_text("{}")
    calls.unlink()
    kept = run("keep")
    (tables,) = calls.read_text().splitlines()
    assert "--pool qkvv_runs=qkvv,qkvv_r1 --pool cls_runs=cls,cls_r1 " in tables
    assert "--contrast qkvv:cls " in tables and tables.endswith("--contrast qkvv_runs:cls_runs")
    assert "pool feature_runs left out" in kept.stderr  # feature_r1 is kept but has no cell here
    calls.unlink()
    gone = run("compare", check=False, REPLICAS="1 3", MODELS="qkvv")
    assert gone.returncode == 2 and f"qkvv_r3: {out}/replica-3/students/qkvv has not finished" in gone.stderr
    assert not calls.exists()  # refused before anything ran
    zero = run("compare", check=False, REPLICAS="0")
    assert zero.returncode == 2 and "replica numbers 1, 2" in zero.stderr
    padded = run("pretrain", check=False, REPLICA="01")  # not a second copy of the first run in replica-01
    assert padded.returncode == 2 and "REPLICA=01: a replica number" in padded.stderr


def test_distill_femto_two_lanes_split_the_runs_with_one_thread_each_and_report_a_failed_lane(tmp_path):
    """LANES=2: every student and MAE femto runs once, in two single-thread lanes (seq_mid before seq, in one lane),
    each lane logging to its own file; a failing run stops its lane and the stage exits non-zero naming the lane."""
    env, calls = _stand_in_mimkit(tmp_path)
    script = ["bash", str(SCRIPTS / "fmnist_distill_femto.sh"), "pretrain"]
    teacher = tmp_path / "mae_ep100.safetensors"
    teacher.write_bytes(b"")
    env = {**env, "TEACHER": str(teacher), "KEEP": str(tmp_path / "kept"), "EPOCHS": "3", "LANES": "2"}
    out = tmp_path / "two"
    done = subprocess.run([*script, str(out)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "seq_mid seq qkvv qk vv | cls feature qkvv_masked qkvv_layer4 mae mae_long (" in done.stdout  # one line
    outs = [line.split("--out ")[1].split()[0].rsplit("/", 1)[1] for line in calls.read_text().splitlines()]
    expected = {"seq_mid", "seq", "qkvv", "qk", "vv", "cls", "feature", "qkvv_masked", "qkvv_layer4"}
    assert sorted(outs) == sorted([*expected, "mae-student", "mae-student-long"])  # each once
    assert outs.index("seq_mid") < outs.index("seq")
    assert set((tmp_path / "threads.txt").read_text().split()) == {"1"} and len(outs) == 11
    assert (out / "lane1.log").is_file() and (out / "lane2.log").is_file()

    calls.unlink()
    failing = {**env, "FAIL_ON": "students/cls "}  # the second lane's first student
    broken = subprocess.run([*script, str(tmp_path / "b")], env=failing, cwd=tmp_path, capture_output=True, text=True)
    assert broken.returncode == 1 and "lane 2 failed" in broken.stderr and "lane 1 failed" not in broken.stderr
    ran = calls.read_text()
    assert "students/feature " not in ran and "mae-student" not in ran  # the failed lane stopped there
    assert "students/vv " in ran  # the other lane finished
    bad = subprocess.run([*script, str(out)], env={**env, "LANES": "3"}, cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "1 or 2" in bad.stderr
    calls.unlink()
    one_lane = {**failing, "LANES": "1"}  # one lane stops at the failure too
    stopped = subprocess.run([*script, str(tmp_path / "c")], env=one_lane, cwd=tmp_path, capture_output=True)
    assert stopped.returncode != 0 and "mae-student" not in calls.read_text()


def test_scaling_study_keeps_each_seed_and_analyses_with_each_sizes_baselines(tmp_path):
    """fmnist_scaling_study.sh runs one seed of the sweep per piece and merges its finished rows into the kept
    results.csv and their curves into curves.json (a row of the same run replaced, other seeds' rows kept); the
    baselines stage compares each size from
    random initialisation; the analysis reads the kept rows with every kept baseline comparison."""
    import csv

    env, calls = _stand_in_mimkit(tmp_path)
    script = ["bash", str(SCRIPTS / "fmnist_scaling_study.sh")]
    out, kept = tmp_path / "study", tmp_path / "kept"
    env = {**env, "KEEP": str(kept)}

    def write(path: Path, rows: list[tuple[str, str]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([("run", "heldout_loss"), *rows])

    missing = subprocess.run([*script, "analyze", str(out)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and "run the sweep stage first" in missing.stderr

    write(kept / "results.csv", [("femto-seed0", "0.5"), ("femto-seed1", "0.9")])  # seed 1 from an earlier try
    write(out / "results.csv", [("femto-seed1", "0.4"), ("pico-seed1", "0.3")])
    (kept / "curves.json").write_text(json.dumps({"femto-seed0": "kept", "femto-seed1": "old", "gone": "x"}))
    (out / "curves.json").write_text(json.dumps({"femto-seed1": "new", "pico-seed1": "new"}))
    subprocess.run([*script, "sweep", "1", str(out)], env=env, cwd=tmp_path, check=True, capture_output=True)
    assert calls.read_text().splitlines() == [f"-m mimkit sweep --config scaling_fmnist_v2 --out {out} --only *-seed1"]
    calls.unlink()
    no_ft = {**env, "FINETUNE": "0"}  # pretraining only: the sweep skips its fine-tunes
    subprocess.run([*script, "sweep", "1", str(out)], env=no_ft, cwd=tmp_path, check=True, capture_output=True)
    assert calls.read_text().splitlines()[0].endswith("--only *-seed1 --no-finetune")
    with open(kept / "results.csv", newline="") as fh:
        assert {row["run"]: row["heldout_loss"] for row in csv.DictReader(fh)} == {
            "femto-seed0": "0.5",
            "femto-seed1": "0.4",
            "pico-seed1": "0.3",
        }
    # each kept row's curves beside it (the turn-up check reads them): replaced by the newer run, none without a row
    assert json.loads((kept / "curves.json").read_text()) == {
        "femto-seed0": "kept",
        "femto-seed1": "new",
        "pico-seed1": "new",
    }

    calls.unlink()
    subset = {**env, "MODELS": "mim_vit_pico mim_vit_nano", "SEEDS": "2"}
    subprocess.run([*script, "baselines", str(out)], env=subset, cwd=tmp_path, check=True, capture_output=True)
    pico, nano = calls.read_text().splitlines()
    assert pico.startswith(f"-m mimkit compare --lanes 1 --init scratch=scratch --out {out}/compare-mim_vit_pico ")
    for line in (pico, nano):
        assert "--protocols knn,linprobe,finetune " in line and "--seeds 2 " in line and "model.patch_size=8" in line
        assert "--set data.fraction=0.1 " in line and "--finetune-config finetune_fmnist_pico " in line
    assert "model.name=mim_vit_nano " in nano

    calls.unlink()
    (kept / "compare-mim_vit_pico" / "summary.csv").write_text("model\n")  # kept by the baselines stage
    assert (kept / "compare-mim_vit_nano").is_dir()  # kept too, but no summary yet: left out
    subprocess.run([*script, "analyze", str(out)], env=env, cwd=tmp_path, check=True, capture_output=True)
    assert calls.read_text().splitlines() == [
        f"-m mimkit scaling analyze {kept}/results.csv --out {kept}/analysis "
        f"--baselines mim_vit_pico={kept}/compare-mim_vit_pico"
    ]


def test_overfit_study_runs_the_long_sweep_through_the_scaling_study_stages(tmp_path):
    """fmnist_overfit_study.sh (DS1) is the scaling study's stages with its own sweep and kept-results folder: one
    seed per piece, rows kept, the analysis on the kept rows; a missing seed or an unknown stage is refused."""
    import csv

    env, calls = _stand_in_mimkit(tmp_path)
    script = ["bash", str(SCRIPTS / "fmnist_overfit_study.sh")]
    out = tmp_path / "study"
    out.mkdir()
    with open(out / "results.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("run", "heldout_loss"), ("nano-seed2", "0.3")])
    subprocess.run([*script, "sweep", "2", str(out)], env=env, cwd=tmp_path, check=True, capture_output=True)
    assert calls.read_text().splitlines() == [
        f"-m mimkit sweep --config scaling_fmnist_overfit_long --out {out} --only *-seed2"
    ]
    kept = tmp_path / "docs/results/fmnist-overfit-long"
    assert (kept / "results.csv").read_text().splitlines()[1] == "nano-seed2,0.3"

    calls.unlink()
    subprocess.run([*script, "analyze"], env=env, cwd=tmp_path, check=True, capture_output=True)
    assert calls.read_text().splitlines() == [
        "-m mimkit scaling analyze docs/results/fmnist-overfit-long/results.csv "
        "--out docs/results/fmnist-overfit-long/analysis"
    ]
    for args, needle in ((["sweep"], "sweep SEED"), (["baselines"], "unknown stage 'baselines'")):
        bad = subprocess.run([*script, *args], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert bad.returncode != 0 and needle in bad.stderr


def test_study_scripts_pick_python_from_python_env_then_venv_then_path(tmp_path):
    """scripts/lib/mimkit.sh: PYTHON wins, then the checkout's .venv (make setup), then python on PATH."""
    lib = SCRIPTS / "lib" / "mimkit.sh"

    def command(env_extra: dict[str, str]) -> str:
        env = {k: v for k, v in cli_env().items() if k != "PYTHON"} | env_extra
        done = subprocess.run(
            ["bash", "-c", f'source {lib} && echo "$M"'], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        return done.stdout.strip()

    assert command({}) in ("python -m mimkit", "python3 -m mimkit")  # python where PATH has one
    venv = tmp_path / ".venv" / "bin" / "python"
    venv.parent.mkdir(parents=True)
    venv.write_text("#!/bin/sh\n")
    venv.chmod(0o755)
    assert command({}) == ".venv/bin/python -m mimkit"
    assert command({"PYTHON": "/opt/py/bin/python3"}) == "/opt/py/bin/python3 -m mimkit"


def test_transfer_attention_long_analyses_each_seed_with_finished_cells_and_pools_them(tmp_path):
    """fmnist_transfer_study.sh attention-long: one report per seed whose scratch (supervised from scratch) and
    mae_ep100 fine-tune cells have finished, with the 100-epoch encoder paired with its fine-tune, then the pooled
    seeds; a missing encoder is refused by name."""
    env, calls = _stand_in_mimkit(tmp_path)
    script = ["bash", str(SCRIPTS / "fmnist_transfer_study.sh"), "attention-long", "study"]
    encoder = tmp_path / "mae_ep100.safetensors"
    env = {**env, "LONG_MAE": str(encoder)}
    missing = subprocess.run(script, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and f"no 100-epoch MAE encoder at {encoder}" in missing.stderr

    encoder.write_bytes(b"")
    cells = tmp_path / "study/compare-classification-60k/cells"
    finished = [
        "scratch__finetune__classification",
        "mae_ep100__finetune__classification",
        "scratch__finetune__classification__seed1",  # seed 1: MAE's fine-tune still running
        "scratch__finetune__classification__seed2",
        "mae_ep100__finetune__classification__seed2",
    ]
    for name in finished:
        (cells / name).mkdir(parents=True)
        (cells / name / "results.json").write_text("{}")
    done = subprocess.run(script, env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "seed 1 skipped" in done.stderr
    seed0, seed2, pooled = calls.read_text().splitlines()
    for seed, line in ((0, seed0), (2, seed2)):
        suffix = "" if seed == 0 else f"__seed{seed}"
        assert line.startswith(f"-m mimkit analyze report --model mae={encoder} ")
        assert (
            f"--model supervised=study/compare-classification-60k/cells/scratch__finetune__classification{suffix} "
            in line
        )
        assert (
            f"--model mae_ft=study/compare-classification-60k/cells/mae_ep100__finetune__classification{suffix} "
            in line
        )
        assert "--pair mae,mae_ft " in line and f"--set seed={seed} " in line and "--foreground" in line
        assert line.endswith(f"--out study/attention-long/seed{seed}")
    assert pooled == (
        "-m mimkit analyze seeds --from study/attention-long/seed0 --from study/attention-long/seed2 "
        "--out study/attention-long/seeds"
    )


def test_transfer_fine_grained_and_concept_stages_compare_on_class_subsets(tmp_path):
    """fine-grained compares every encoder on the four tops; concept first pretrains a supervised encoder on classes
    0-4 (once), then compares it with every encoder on classes 5-9; both keep their cells."""
    env, calls = _stand_in_mimkit(tmp_path)
    script = ["bash", str(SCRIPTS / "fmnist_transfer_study.sh")]
    env = {**env, "KEEP": str(tmp_path / "kept"), "SEEDS": "2"}
    subprocess.run([*script, "fine-grained", "study"], env=env, cwd=tmp_path, check=True, capture_output=True)
    compares = [line for line in calls.read_text().splitlines() if "--out study/compare-fine-grained " in line]
    (tops,) = [line for line in compares if "--tables-only" not in line]
    assert "--set data.class_subset=[0,2,4,6] " in tops and "--seeds 2 " in tops
    assert "--init scratch=scratch:" in tops and "--init supervised=study/pre/supervised " in tops
    assert "--protocols knn,linprobe,finetune " in tops and "supervised_0to4" not in tops

    calls.unlink()
    subprocess.run([*script, "concept", "study"], env=env, cwd=tmp_path, check=True, capture_output=True)
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("-m mimkit pretrain --config supervised_fmnist_tiny --out study/pre/supervised_0to4 ")
    assert "--set data.class_subset=[0,1,2,3,4] " in lines[0] and "--steps 800 " in lines[0]
    (concept,) = [line for line in lines if "--out study/compare-concept " in line and "--tables-only" not in line]
    assert "--init supervised_0to4=study/pre/supervised_0to4 " in concept
    assert "--set data.class_subset=[5,6,7,8,9] " in concept and "--init supervised=study/pre/supervised " in concept

    calls.unlink()
    subprocess.run([*script, "concept", "study"], env=env, cwd=tmp_path, check=True, capture_output=True)
    assert not any("pretrain" in line for line in calls.read_text().splitlines())  # pretrained once


def test_transfer_geometric_stage_compares_every_dense_task_and_keeps_its_cells(tmp_path):
    """geometric: the four dense tasks by default (GEOMETRIC_TASKS picks some), frozen and fine-tuned on 6,000
    images; a cell kept from another machine is restored first, so the compare skips it."""
    env, calls = _stand_in_mimkit(tmp_path)
    kept = tmp_path / "kept" / "compare-geometric" / "cells"
    kept.mkdir(parents=True)
    (kept / "scratch__finetune__depth.json").write_text('{"config_hash": "x", "row": {}}')
    script = ["bash", str(SCRIPTS / "fmnist_transfer_study.sh"), "geometric", "study"]
    env = {**env, "KEEP": str(tmp_path / "kept"), "MODELS": "mae scratch"}
    subprocess.run(script, env=env, cwd=tmp_path, check=True, capture_output=True)
    restored = tmp_path / "study" / "compare-geometric" / "cells" / "scratch__finetune__depth" / "cell.json"
    assert restored.read_text() == '{"config_hash": "x", "row": {}}'
    lines = calls.read_text().splitlines()
    (compare,) = [f"{line} " for line in lines if "--tables-only" not in line]
    assert any("--out study/compare-geometric --tables-only" in line for line in lines)  # the keep's tables
    assert "--out study/compare-geometric " in compare
    assert "--tasks cluttered_localization,keypoints,depth,tracking " in compare
    assert "--protocols linprobe,finetune " in compare and "--set-finetune train.epochs=10 " in compare
    assert "--set-probe data.fraction=0.1 " in compare and "--set-finetune data.fraction=0.1 " in compare

    calls.unlink()
    env = {**env, "GEOMETRIC_TASKS": "depth,tracking", "PROTOCOLS": "finetune"}
    subprocess.run(script, env=env, cwd=tmp_path, check=True, capture_output=True)
    (compare,) = [line for line in calls.read_text().splitlines() if "--tables-only" not in line]
    assert "--tasks depth,tracking " in compare and "--protocols finetune " in compare


def test_combined_task_takes_an_exported_mae_encoder_and_extra_models(tmp_path):
    """fmnist_combined_task.sh: MAE may be an exported encoder file (no demo run then), EXTRA_MODELS adds NAME=SOURCE
    encoders to the same comparison, and a malformed extra is refused by name."""
    env, calls = _stand_in_mimkit(tmp_path)
    script = ["bash", str(SCRIPTS / "fmnist_combined_task.sh"), "out"]
    encoder = tmp_path / "mae_ep100.safetensors"
    encoder.write_bytes(b"")
    env = {**env, "MAE": str(encoder), "EXTRA_MODELS": f"long={encoder} other=runs/x"}
    subprocess.run(script, env=env, cwd=tmp_path, check=True, capture_output=True)
    pretrain, compare = calls.read_text().splitlines()
    assert pretrain.startswith("-m mimkit pretrain --config supervised_fmnist_tiny --out out/pre/supervised ")
    assert compare.startswith(f"-m mimkit compare --lanes 1 --init mae={encoder} --init supervised=out/pre/supervised ")
    assert f"--init scratch=scratch --init long={encoder} --init other=runs/x --out out/compare " in compare
    assert "mimkit.demo" not in calls.read_text()
    bad = subprocess.run(script, env={**env, "EXTRA_MODELS": "long"}, cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "'long' is not NAME=SOURCE" in bad.stderr


def test_every_study_script_passes_lanes_to_its_comparisons():
    """LANES=N reaches every `mimkit compare` a study script runs (scripts/lib/mimkit.sh's LANES_ARG)."""
    calls = [
        (path.name, line)
        for path in sorted(SCRIPTS.glob("*.sh"))
        for line in path.read_text().splitlines()
        if "$M compare" in line
    ]
    assert len(calls) >= 8
    assert [name for name, line in calls if '$M compare "${LANES_ARG[@]}" ' not in line] == []


def test_keep_compare_contrasts_the_pairs_whose_two_models_have_cells(tmp_path):
    """scripts/lib/compare_keep.sh: keep_compare's A:B pairs reach `compare --tables-only` as --contrast only when
    both models have a finished cell (a study kept half-way would otherwise be refused for a model not run yet)."""
    env, calls = _stand_in_mimkit(tmp_path)
    cmp = tmp_path / "compare-x"
    names = ["qkvv__knn__classification", "cls__knn__classification", "scratch__knn__classification__seed1"]
    for name in [*names, "qkvv_masked__knn__classification"]:
        (cmp / "cells" / name).mkdir(parents=True)
        (cmp / "cells" / name / "cell.json").write_text("{}")
    (cmp / "cells" / "feature__knn__classification").mkdir()  # running: no marker
    # qkvv_mask has no cells although qkvv_masked does; qk none although qkvv does: names, not prefixes
    pairs = "qkvv:cls qkvv:feature qkvv:scratch qkvv_mask:cls qk:cls qkvv_masked:qkvv"
    for table in ["results.md", "contrasts.png"]:
        (cmp / table).write_text(table)
    (tmp_path / "kept/compare-x").mkdir(parents=True)
    (tmp_path / "kept/compare-x/contrasts.csv").write_text("from an earlier keep")  # the tables no longer have it
    keep = f"source {SCRIPTS / 'lib/compare_keep.sh'}; keep_compare kept {cmp} {pairs}"
    script = f'M="python -m mimkit"; {keep}'
    done = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, check=True, capture_output=True, text=True)
    (line,) = calls.read_text().splitlines()
    wanted = "--contrast qkvv:cls --contrast qkvv:scratch --contrast qkvv_masked:qkvv"
    assert line == f"-m mimkit compare --out {cmp} --tables-only {wanted}"
    left_out = [w.split()[1] for w in done.stderr.splitlines() if w.startswith("contrast ")]
    assert left_out == ["qkvv:feature", "qkvv_mask:cls", "qk:cls"]  # said, not silently dropped
    kept = sorted(p.name for p in (tmp_path / "kept/compare-x/cells").iterdir())
    assert kept == sorted(f"{n}.json" for n in [*names, "qkvv_masked__knn__classification"])
    assert sorted(p.name for p in (tmp_path / "kept/compare-x").iterdir()) == ["cells", "contrasts.png", "results.md"]


def test_keep_compare_pools_the_replicas_that_all_have_cells_and_contrasts_the_pools(tmp_path):
    """keep_compare's NAME=A,B,C words reach `compare --tables-only` as --pool only when every replica has a finished
    cell; a pair naming a pool counts it as measured (it has no cells of its own), one naming a pool left out not."""
    env, calls = _stand_in_mimkit(tmp_path)
    cmp = tmp_path / "compare-x"
    for model in ["mae_s0", "mae_s1", "sup"]:
        name = f"{model}__finetune__classification"
        (cmp / "cells" / name).mkdir(parents=True)
        (cmp / "cells" / name / "cell.json").write_text("{}")
    words = "mae=mae_s0,mae_s1 sup3=sup,sup_s1,sup_s2 mae:sup mae:sup3 mae_s0:mae_s1 p= q=a,,b r=a s=a,a sup=a,b"
    words += " mae=mae_s1,mae_s0"  # a second pool of that name
    library = SCRIPTS / "lib/compare_keep.sh"
    script = f'M="python -m mimkit"; source {library}; keep_compare kept {cmp} {words}'
    done = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, check=True, capture_output=True, text=True)
    (line,) = calls.read_text().splitlines()
    wanted = "--pool mae=mae_s0,mae_s1 --contrast mae:sup --contrast mae_s0:mae_s1"
    assert line == f"-m mimkit compare --out {cmp} --tables-only {wanted}"
    why = "give NAME=A,B[,C...], two or more different models, a new name"
    assert done.stderr.splitlines() == [
        f"pool sup3 left out of {cmp}: a replica without finished cells",
        # what compare would refuse (stopping the whole keep) is left out by name instead
        *(f"pool word '{w}' left out of {cmp}: {why}" for w in ("p=", "q=a,,b", "r=a", "s=a,a", "sup=a,b")),
        f"pool word 'mae=mae_s1,mae_s0' left out of {cmp}: {why}",
        f"contrast mae:sup3 left out of {cmp}: a model without finished cells",
    ]


def test_the_distillation_studys_contrasts_name_its_own_models():
    """PAIRS in fmnist_distill_femto.sh: every name is a student, a MAE femto or scratch (keep_compare leaves out a
    pair without cells, so a misspelt name would only ever be reported, never contrasted)."""
    import re

    text = (SCRIPTS / "fmnist_distill_femto.sh").read_text()
    students = re.search(r'^STUDENTS="([^"]+)"', text, re.M)[1].replace("$TEACHER_LAYER", "4").split()
    pairs = re.search(r"^PAIRS=\(([^)]+)\)", text, re.M)[1].replace('"', "").replace("$TEACHER_LAYER", "4").split()
    names = {name for pair in pairs for name in pair.split(":")}
    assert len(pairs) >= 8 and names <= {*students, "mae", "mae_long", "scratch"}, names
