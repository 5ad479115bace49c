"""The Engine: schedule, checkpoints (atomic, last/best/keep-K, corrupt files), resume after SIGKILL identical to
an unbroken run, SIGTERM saves and exits, the non-finite guard, metrics."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    KILLABLE,
    ROOT,
    TINY,
    cli_env,
    cli_error,
    nonfinite_losses,
    run_cli,
    sets,
    tiny_engine,
    wait_for_checkpoint,
)
from mimkit.engine import checkpoint as ckpt
from mimkit.engine.metrics import read_metrics
from mimkit.engine.schedule import warmup_cosine_factor
from mimkit.engine.trainer import NonFiniteLossError


def _args(out: Path, overrides: list[str]) -> list[str]:
    return [
        "pretrain",
        "--config",
        str(ROOT / "src/mimkit/recipes/mae_fmnist_tiny.yaml"),
        "--out",
        str(out),
        *sets(overrides),
    ]


def _start(out: Path, overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mimkit", *_args(out, overrides)],
        env=cli_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.find_checkpoint(run) / ckpt.MODEL_FILE))


def test_schedule_warmup_then_cosine_to_min():
    f = [warmup_cosine_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[10] == pytest.approx(1.0) and warmup_cosine_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    reference = run_cli(*_args(tmp_path / "ref", KILLABLE), check=True)
    assert reference.returncode == 0
    proc = _start(tmp_path / "killed", KILLABLE)
    wait_for_checkpoint([tmp_path / "killed"], proc, min_step=10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = run_cli(*_args(tmp_path / "killed", KILLABLE), check=True)
    assert "resumed from step" in resumed.stdout
    ref_w, got_w = _final_weights(tmp_path / "ref"), _final_weights(tmp_path / "killed")
    assert ref_w.keys() == got_w.keys()
    for key in ref_w:  # bit-exact: both runs on this machine, one process each, the same thread count
        assert torch.equal(ref_w[key], got_w[key]), key
    # metrics: every step logged exactly once, and the held-out curve is identical
    ref_m, got_m = read_metrics(tmp_path / "ref/metrics.jsonl"), read_metrics(tmp_path / "killed/metrics.jsonl")
    pick = lambda rows, split: [(r["step"], r["loss"]) for r in rows if r.get("split") == split]  # noqa: E731
    assert pick(got_m, "heldout") == pick(ref_m, "heldout")
    train_steps = [r["step"] for r in got_m if r.get("event") == "train"]
    assert train_steps == sorted(set(train_steps))


def test_sigterm_saves_checkpoint_and_exits_cleanly(tmp_path):
    proc = _start(tmp_path / "run", KILLABLE)
    wait_for_checkpoint([tmp_path / "run"], proc, min_step=5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "checkpoint saved" in stderr
    meta = json.loads((tmp_path / "run/checkpoints/last/meta.json").read_text())
    assert 5 <= meta["step"] < 40
    first_session = torch.load(tmp_path / "run/checkpoints/last" / ckpt.STATE_FILE, weights_only=True)["seconds"]
    assert first_session > 0
    done = run_cli(*_args(tmp_path / "run", KILLABLE), check=True)
    assert f"resumed from step {meta['step']}" in done.stdout
    assert json.loads((tmp_path / "run/checkpoints/last/meta.json").read_text())["step"] == 40
    # results.json's time counts both sessions, and re-running the finished run keeps it
    seconds = json.loads((tmp_path / "run/results.json").read_text())["seconds"]
    assert seconds > first_session
    run_cli(*_args(tmp_path / "run", KILLABLE), check=True)
    assert json.loads((tmp_path / "run/results.json").read_text())["seconds"] == seconds


def test_checkpoints_last_best_and_keep_last(tmp_path):
    run_cli(*_args(tmp_path / "run", KILLABLE), check=True)
    root = tmp_path / "run" / "checkpoints"
    steps = sorted(p.name for p in root.glob("step-*"))
    assert (root / "last").resolve().name == "step-0000040"
    heldout = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if r.get("split") == "heldout"]
    best = min((r for r in heldout if r["step"] > 0), key=lambda r: r["loss"])
    assert (root / "best").resolve().name == ckpt.step_dir_name(best["step"])
    assert len(steps) <= 3  # keep_last=2, plus best when it is older
    state = torch.load(root / "last" / ckpt.STATE_FILE, weights_only=True)
    assert state["step"] == 40 and "optimizer" in state and "rng" in state and "scheduler" in state
    config = (tmp_path / "run/config.yaml").read_text()
    assert "mask_ratio: 0.75" in config  # resolved defaults are written out


def test_corrupt_checkpoint_is_a_clear_error(capsys, tmp_path):
    run = tmp_path / "run"
    run_cli(*_args(run, [*TINY, "train.steps=4"]), check=True)
    (run / "checkpoints/last" / ckpt.MODEL_FILE).write_bytes(b"not a safetensors file")
    err = cli_error(capsys, *_args(run, [*TINY, "train.steps=8"]))
    assert "corrupt" in err and "model.safetensors" in err


def test_optimizer_state_of_other_parameter_groups_is_refused_with_the_fix(capsys, tmp_path):
    """A checkpoint whose optimizer was grouped differently (another mimkit version's layer-decay grouping) fits
    the model but not the optimizer: a clear error, not torch's ValueError as an internal error."""

    run = tmp_path / "run"
    run_cli(*_args(run, [*TINY, "train.steps=4"]), check=True)
    last = (run / "checkpoints/last").resolve()
    state = torch.load(last / ckpt.STATE_FILE, weights_only=False)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]  # fewer groups than the run builds
    torch.save(state, last / ckpt.STATE_FILE)
    meta = json.loads((last / ckpt.META_FILE).read_text())
    meta["sha256"][ckpt.STATE_FILE] = ckpt.file_sha256(last / ckpt.STATE_FILE)  # as its writer would have recorded
    (last / ckpt.META_FILE).write_text(json.dumps(meta))
    err = cli_error(capsys, *_args(run, [*TINY, "train.steps=8"]))
    assert "other parameter groups" in err and "new --out directory" in err and "internal error" not in err


def test_resume_flag_requires_a_checkpoint(capsys, tmp_path):
    assert "no checkpoints" in cli_error(capsys, *_args(tmp_path / "new", TINY), "--resume")


def test_atomic_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 1, {"w": torch.ones(2)}, {"step": 1}, {"a": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "atomic_torch_save", crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(root, 2, {"w": torch.zeros(2)}, {"step": 2}, {"a": 2})
    found = ckpt.find_checkpoint(tmp_path)
    assert found.resolve().name == "step-0000001"
    assert torch.equal(ckpt.load_weights(found)["w"], torch.ones(2))
    ckpt.prune(root, keep_last=1)
    assert not list(root.glob(".tmp-*"))


def test_keep_every_saves_and_keeps_milestones_that_init_can_start_from(tmp_path):
    from mimkit import load
    from mimkit.config import ConfigError, load_config

    run = tmp_path / "run"
    sets_ = [*TINY, "train.steps=12", "train.ckpt_every=4", "train.keep_last=1", "train.keep_every=5"]
    run_cli(*_args(run, sets_))
    kept = {p.name for p in (run / "checkpoints").glob("step-*")}
    milestones = {"step-0000005", "step-0000010"}  # saved although 4 does not divide them, and never pruned
    assert milestones | {"step-0000012"} <= kept
    # the plain saves (4, 8) are pruned to keep_last=1; at most one survives, as a best one pruning left for later
    assert len(kept - milestones - {"step-0000012"}) <= 1
    milestone = run / "checkpoints" / "step-0000005"
    meta = json.loads((milestone / ckpt.META_FILE).read_text())
    assert meta["step"] == 5
    model = load(milestone)  # a milestone loads like a run: its weights, not the last ones
    weights = ckpt.load_weights(milestone)
    name = next(k for k in weights if k.endswith("patch_embed.proj.weight"))
    assert torch.equal(model.state_dict()[name], weights[name])
    assert not torch.equal(weights[name], ckpt.load_weights(run / "checkpoints" / "step-0000012")[name])
    from mimkit.weights.sources import resolve_source

    source = resolve_source(str(milestone), load_config("finetune_fmnist_tiny"))  # what --init reads
    encoder_key = next(k for k in source.state if k.endswith("patch_embed.proj.weight"))
    assert torch.equal(source.state[encoder_key], weights[name])
    with pytest.raises(ConfigError, match="keep_every"):
        load_config(str(ROOT / "src/mimkit/recipes/mae_fmnist_tiny.yaml"), ["train.keep_every=0"])


def test_find_checkpoint_falls_back_when_last_link_is_missing(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (3, 6):
        ckpt.save_checkpoint(root, step, {"w": torch.full((1,), float(step))}, None, {})
    (root / "last").unlink()
    assert ckpt.find_checkpoint(tmp_path).name == "step-0000006"


_engine = tiny_engine


def test_nonfinite_steps_are_skipped_then_the_run_stops(tmp_path):
    engine, method = _engine(tmp_path / "a", "train.max_nonfinite=3", "train.steps=10")
    with nonfinite_losses(method, lambda n: n == 2):  # the second step only
        engine.fit()
    events = read_metrics(tmp_path / "a/metrics.jsonl")
    assert [r["step"] for r in events if r.get("event") == "nonfinite"] == [2]
    assert engine.skipped_total == 1
    for p in method.parameters():
        assert torch.isfinite(p).all()

    engine, method = _engine(tmp_path / "b", "train.max_nonfinite=3", "train.steps=10")
    with nonfinite_losses(method, lambda n: True):
        with pytest.raises(NonFiniteLossError, match="Last good checkpoint"):
            engine.fit()


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """accum_steps=2 of 8 images sees the same 16 images per step as one batch of 16, so weights agree."""
    weights = {}
    for accum in (1, 2):
        engine, method = _engine(
            tmp_path / f"acc{accum}", f"train.accum_steps={accum}", "train.steps=6", "train.batch_size=16"
        )
        engine.fit()
        weights[accum] = {k: v.detach().clone() for k, v in method.state_dict().items()}
    moved = 0
    for key, a in weights[1].items():
        b = weights[2][key]
        if key.endswith("attn.qkv.bias"):  # key-bias slice: zero true gradient, see test_ddp
            n = a.numel() // 3
            a, b = torch.cat([a[:n], a[2 * n :]]), torch.cat([b[:n], b[2 * n :]])
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=key)
    fresh = _engine(tmp_path / "fresh", "train.steps=6")[1].state_dict()
    moved = sum(not torch.allclose(fresh[k], weights[1][k]) for k in fresh)
    assert moved > len(fresh) // 2


def test_resuming_with_another_model_refuses_and_keeps_the_config(capsys, tmp_path):
    run = tmp_path / "run"
    run_cli(*_args(run, [*TINY, "train.steps=4"]), check=True)
    before = (run / "config.yaml").read_text()
    assert "different model" in cli_error(capsys, *_args(run, [*TINY, "train.steps=8", "model.name=mim_vit_pico"]))
    assert (run / "config.yaml").read_text() == before
    extended = run_cli(*_args(run, [*TINY, "train.steps=8"]), check=True)  # same model, longer: resumes
    assert "resumed from step 4" in extended.stdout
