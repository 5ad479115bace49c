"""The slower fault injections (issue 20, item 7), marked `faults` and run by `make test-faults` (CI runs it after
`make test`): repeated kill -9 at random moments, a full disk during a checkpoint write, and a torchrun job whose
second rank is stopped or killed."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import KILLABLE, ROOT, TINY, cli_env, run_cli, sets, wait_for_checkpoint
from mimkit.engine import checkpoint as ckpt
from mimkit.engine.metrics import read_metrics

pytestmark = pytest.mark.faults


def _args(out: Path, overrides: list[str]) -> list[str]:
    return ["pretrain", "--config", "mae_fmnist_tiny", "--out", str(out), *sets(overrides)]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.find_checkpoint(run) / ckpt.MODEL_FILE))


def test_repeated_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """Five SIGKILLs at random moments (seeded), each followed by a restart; the run then finishes with the weights
    and held-out curve of a run never interrupted (bit-exact: same machine, one process, same thread count)."""
    run_cli(*_args(tmp_path / "ref", KILLABLE), check=True)
    killed = tmp_path / "killed"
    draw = random.Random(20)
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "mimkit", *_args(killed, KILLABLE)],
            env=cli_env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(draw.uniform(1.0, 4.0))  # start-up takes about a second: most kills land during training
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3
    final = run_cli(*_args(killed, KILLABLE), check=True)
    assert final.returncode == 0
    ref, got = _weights(tmp_path / "ref"), _weights(killed)
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    rows = read_metrics(killed / "metrics.jsonl")
    pick = lambda rs: [(r["step"], r["loss"]) for r in rs if r.get("split") == "heldout"]  # noqa: E731
    assert pick(rows) == pick(read_metrics(tmp_path / "ref/metrics.jsonl"))
    steps = [r["step"] for r in rows if r.get("event") == "train"]
    assert steps == sorted(set(steps))  # every interval logged once
    assert not list((killed / "checkpoints").glob(".tmp-*"))


def test_a_full_disk_during_a_checkpoint_write_keeps_the_last_one_and_resumes(capsys, tmp_path, monkeypatch):
    from mimkit.cli import main
    from mimkit.engine import atomic

    run = tmp_path / "run"
    args = _args(run, [*TINY, "train.steps=12", "train.ckpt_every=4", "train.keep_last=5"])
    real = atomic.save_safetensors

    def full_at_step_8(tensors, path, metadata=None):
        if "step-0000008" in str(path):
            partial = Path(path).with_name(f".{Path(path).name}.partial")
            partial.write_bytes(b"\0" * 64)  # what a write cut short leaves behind
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path, metadata)

    monkeypatch.setattr(ckpt, "save_safetensors", full_at_step_8)
    assert main(args) == 74
    err = capsys.readouterr().err
    assert "No space left on device" in err and "resumes from the last checkpoint" in err and "Traceback" not in err
    assert ckpt.find_checkpoint(run).resolve().name == "step-0000004"
    ckpt.load_weights(ckpt.find_checkpoint(run))  # intact, checksum verified
    monkeypatch.setattr(ckpt, "save_safetensors", real)  # space freed
    assert main(args) == 0
    assert "resumed from step 4" in capsys.readouterr().out
    assert ckpt.find_checkpoint(run).resolve().name == "step-0000012"
    assert not list((run / "checkpoints").glob(".tmp-*"))


def _rank_pids(tag: str) -> dict[int, int]:
    """PIDs of the torchrun workers started with MIMKIT_TEST_TAG=tag, by rank (from /proc/PID/environ)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("MIMKIT_TEST_TAG") == tag and "RANK" in env and "mimkit" in (entry / "cmdline").read_text():
            found[int(env["RANK"])] = int(entry.name)
    return found


def _torchrun(run: Path, port: int, tag: str, extra: list[str], launcher: str = "torch.distributed.run"):
    env = {**cli_env(), "MIMKIT_TEST_TAG": tag}
    cmd = [sys.executable, "-m", launcher, "--nproc_per_node=2", f"--master_port={port}"]
    cmd += ["-m", "mimkit", *_args(run, [*KILLABLE, "train.steps=400", *extra])]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _started(run: Path, proc: subprocess.Popen, tag: str, timeout: float = 120) -> dict[int, int]:
    wait_for_checkpoint([run], proc, timeout=timeout)
    pids = _rank_pids(tag)
    assert set(pids) == {0, 1}, pids
    return pids


def test_a_stopped_rank_becomes_an_error_on_the_other_within_the_timeout(tmp_path):
    tag = uuid.uuid4().hex
    run = tmp_path / "run"
    proc = _torchrun(run, 29561, tag, ["train.dist_timeout=5"], launcher="mimkit.launch")
    pids = _started(run, proc, tag)
    os.kill(pids[1], signal.SIGSTOP)
    t0 = time.time()
    try:
        while _rank_pids(tag).get(0) and time.time() - t0 < 90:
            time.sleep(0.2)
        waited = time.time() - t0
    finally:
        os.kill(pids[1], signal.SIGCONT)
        os.kill(pids[1], signal.SIGKILL) if _rank_pids(tag).get(1) else None
    _, stderr = proc.communicate(timeout=120)
    assert waited < 60, f"rank 0 waited {waited:.0f} s for the stopped rank"
    assert "mimkit: error: a collective with the other ranks failed" in stderr, stderr[-3000:]
    assert "(exitcode: 75) local_rank: 0" in stderr  # torchrun's report of rank 0's exit status
    assert proc.returncode == 75  # mimkit.launch exits with the failed rank's status (torchrun alone: 1)
    assert ckpt.load_weights(ckpt.find_checkpoint(run))  # what was saved before stays loadable


def test_a_killed_rank_stops_the_other_and_the_run_resumes(tmp_path):
    tag = uuid.uuid4().hex
    run = tmp_path / "run"
    proc = _torchrun(run, 29563, tag, ["train.dist_timeout=20", "train.steps=60"])
    pids = _started(run, proc, tag)
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.time()
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.time() - t0 < 60
    step = int(ckpt.find_checkpoint(run).resolve().name.split("-")[1])
    assert step >= 5
    resumed = run_cli(*_args(run, [*KILLABLE, "train.steps=60"]), check=True)  # on one process: a new world size
    assert f"resumed from step {step}" in resumed.stdout


def test_sigterm_to_the_launcher_saves_on_every_rank_and_exits_143(tmp_path):
    """`python -m mimkit.launch` (torchrun's arguments) forwards SIGTERM to the ranks, which each save and exit 143,
    and exits 143 itself (torchrun alone exits 1 with a traceback); the run then resumes."""
    tag = uuid.uuid4().hex
    run = tmp_path / "run"
    proc = _torchrun(run, 29565, tag, ["train.steps=60"], launcher="mimkit.launch")
    _started(run, proc, tag)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert stderr.count("SIGTERM received: checkpoint saved at step") == 2  # one line per rank
    assert "mimkit.launch: SIGTERM received" in stderr and "Traceback" not in stderr
    step = int(ckpt.find_checkpoint(run).resolve().name.split("-")[1])
    resumed = run_cli(*_args(run, [*KILLABLE, "train.steps=60"]), check=True)
    assert f"resumed from step {step}" in resumed.stdout


def test_sigterm_to_a_comparison_in_lanes_stops_every_lane_and_exits_143(tmp_path):
    """`compare --lanes 2`: SIGTERM to the comparison stops both running cells (each saves its checkpoint), leaves
    no worker and no stop file behind and exits 143 with one line; the same command then resumes both cells."""
    out = tmp_path / "cmp"
    sets_ = ["data.name=synthetic", "data.synthetic_size=128", "data.img_size=16", "data.in_chans=1"]
    sets_ += ["model.name=mim_vit_femto", "device=cpu"]
    tune = ["train.epochs=null", "train.steps=400", "train.ckpt_every=5", "train.log_every=1", "train.eval_every=400"]
    tune += ["train.batch_size=16", "train.eval_samples=16", "train.tensorboard=false"]
    cmd = [sys.executable, "-m", "mimkit", "compare", "--init", "scratch", "--out", str(out), "--protocols"]
    cmd += ["finetune", "--seeds", "2", "--no-baselines", "--lanes", "2", *sets(sets_)]
    cmd += [w for s in tune for w in ("--set-finetune", s)]
    proc = subprocess.Popen(cmd, env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cells = [
        out / "cells" / name
        for name in ("scratch__finetune__classification", "scratch__finetune__classification__seed1")
    ]
    wait_for_checkpoint(cells, proc)  # both lanes have saved one (step 5 may be pruned by then)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=200)
    assert proc.returncode == 143, stderr[-3000:]
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert not (out / ".stopping").exists() and not list(out.glob("cells/*/cell.json"))
    steps = {}
    for cell in cells:
        assert "SIGTERM received: checkpoint saved at step" in cell.with_name(cell.name + ".log").read_text()
        steps[cell.name] = int(ckpt.find_checkpoint(cell).resolve().name.split("-")[1])
        assert 5 <= steps[cell.name] < 400
    again = subprocess.run(cmd, env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 of 2 cells done before" in again.stdout and len(list(out.glob("cells/*/cell.json"))) == 2
    for cell in cells:
        assert f"resumed from step {steps[cell.name]}" in cell.with_name(cell.name + ".log").read_text()
