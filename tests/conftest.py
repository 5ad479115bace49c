"""Shared helpers: tiny configs that train in seconds on 2 CPU cores, and a subprocess runner for the CLI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# A femto ViT on 16 px synthetic images: a step takes milliseconds.
TINY = [
    "device=cpu",
    "data.name=synthetic",
    "data.synthetic_size=128",
    "data.img_size=16",
    "data.in_chans=1",
    "model.name=mim_vit_femto",
    "model.decoder_dim=32",
    "model.decoder_depth=1",
    "model.decoder_heads=2",
    "train.batch_size=16",
    "train.steps=12",
    "train.warmup_steps=2",
    "train.eval_every=4",
    "train.eval_samples=32",
    "train.eval_batch_size=16",
    "train.ckpt_every=4",
    "train.log_every=2",
    "train.tensorboard=false",
    "train.reconstruct=false",
    "train.base_lr=1e-3",
]


# Slow enough (tens of ms a step) that a test can kill the process mid-run; a checkpoint every 5 steps.
KILLABLE = [
    *TINY,
    "data.img_size=32",
    "model.name=mim_vit_pico",
    "train.batch_size=32",
    "train.steps=40",
    "train.ckpt_every=5",
    "train.eval_every=10",
    "train.keep_last=2",
]


@contextlib.contextmanager
def nonfinite_losses(method, bad_call):
    """Within the block, the method's forward returns a NaN loss on the calls (counted from 1) for which
    `bad_call(n)` is true: a run blowing up on cue, for the non-finite guard's tests."""
    original = type(method).forward
    calls = {"n": 0}

    def forward(self, batch):
        calls["n"] += 1
        out = original(self, batch)
        if bad_call(calls["n"]):
            out["loss"] = out["loss"] * float("nan")
        return out

    type(method).forward = forward
    try:
        yield
    finally:
        type(method).forward = original


def tiny_config(*extra: str):
    from mimkit.config import load_config

    return load_config(None, [*TINY, *extra])


def tiny_engine(run_dir, *extra: str):
    """(Engine, Method) on the tiny synthetic config, no evaluators: what `mimkit pretrain` builds, minus the CLI."""
    import torch

    from mimkit.config import resolved
    from mimkit.engine.distributed import DistEnv
    from mimkit.engine.trainer import Engine
    from mimkit.methods import build_method
    from mimkit.training import build_stream, load_data_once

    cfg = resolved(tiny_config(*extra))
    env = DistEnv()
    data = load_data_once(cfg, env, lambda *_: None)
    torch.manual_seed(cfg.seed)  # as pretrain() does: the same init for every engine built here
    method = build_method(cfg)
    return Engine(cfg, run_dir, method, env, build_stream(cfg, data, env), {}), method


def sets(overrides: list[str]) -> list[str]:
    """["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]."""
    return [arg for o in overrides for arg in ("--set", o)]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def wait_for_checkpoint(runs: list[Path], proc: subprocess.Popen, min_step: int = 1, timeout: float = 180) -> None:
    """Wait until every run has saved a checkpoint at `min_step` or later. Any step counts, not one named step: with
    keep_last, a fast machine prunes step 5 before a poll sees it (CI failed so, with two lanes a moment apart)."""
    t0 = time.time()

    from mimkit.engine.checkpoint import step_of

    def reached(run: Path) -> bool:
        return any((step_of(d) or 0) >= min_step for d in (run / "checkpoints").glob("step-*"))

    while not all(reached(run) for run in runs):
        if proc.poll() is not None:
            raise AssertionError(
                f"the command ended (exit {proc.returncode}) before every checkpoint:\n" + proc.communicate()[1][-3000:]
            )
        if time.time() - t0 > timeout:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no checkpoint at step >= {min_step} in {timeout:.0f} s: {runs}")
        time.sleep(0.02)


def cli_error(capsys, *args: str) -> str:
    """Run the CLI in process (no interpreter start-up); it must exit 2 with a one-line `mimkit: error:` message
    and no traceback. Returns the message. (test_config checks the same through a real `python -m mimkit`.)"""
    from mimkit.cli import main

    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("mimkit: error:") and "Traceback" not in err
    return err


def run_cli(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "mimkit", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mimkit {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
