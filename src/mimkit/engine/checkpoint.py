"""Checkpoints: RUN_DIR/checkpoints/step-NNNNNNN/{model.safetensors, state.pt, meta.json}, with `last` and `best`
as symlinks to step folders. A step folder is written under a temporary name and renamed into place, and links
are swapped with one rename, so a kill at any moment leaves the previous checkpoint intact.

meta.json records the SHA-256 of model.safetensors and state.pt; both are verified before use, so bytes changed on
disk (a bad sector, a partial copy) are an error naming the file, not weights that load and train on quietly.
Weights holding NaN or infinity are refused on resume and as an `init` source.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mimkit.engine.atomic import atomic_symlink, atomic_torch_save, atomic_write_text, fsync_dir, save_safetensors
from mimkit.errors import UserError

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"


class CheckpointError(UserError, RuntimeError):
    """A missing or unreadable checkpoint; the message names the path and what to do."""


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def step_of(folder: Path) -> int | None:
    """The step a `step-NNNNNNN` folder holds (None for any other name)."""
    digits = folder.name.removeprefix("step-")
    return int(digits) if folder.name.startswith("step-") and digits.isdigit() else None


def rng_state() -> dict[str, Any]:
    """Every RNG a run touches, in types `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[-1], tuple(py[:-1]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    train_state: dict[str, Any] | None,
    meta: dict[str, Any],
) -> Path:
    """Write step-NNNNNNN atomically and point `last` at it (no state.pt when `train_state` is None: weights only,
    e.g. imported ones, which a run then trains from step 0)."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
    save_safetensors(tensors, tmp / MODEL_FILE, metadata={"format": "pt"})
    if train_state is not None:
        atomic_torch_save(train_state, tmp / STATE_FILE)
    sums = {name: file_sha256(tmp / name) for name in (MODEL_FILE, STATE_FILE) if (tmp / name).is_file()}
    record = {**meta, "step": step, "saved_at": time.time(), "sha256": sums}
    atomic_write_text(tmp / META_FILE, json.dumps(record, indent=1))
    fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
        trash = ckpt_root / f".old-{step_dir_name(step)}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(ckpt_root)
    atomic_symlink(final.name, ckpt_root / "last")
    return final


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify_file(ckpt_dir: Path, name: str) -> None:
    """Compare a checkpoint file with the SHA-256 its meta.json recorded at save time (checkpoints written before
    mimkit recorded them carry none and are not checked)."""
    meta_path = ckpt_dir / META_FILE
    if not meta_path.is_file():
        return
    try:
        expected = json.loads(meta_path.read_text()).get("sha256", {}).get(name)
    except (OSError, json.JSONDecodeError, AttributeError):
        expected = None
    if expected and file_sha256(ckpt_dir / name) != expected:
        raise CheckpointError(
            f"checkpoint file '{ckpt_dir / name}' does not match the SHA-256 recorded when it was saved: it was "
            "changed or damaged on disk. Delete that checkpoint folder to resume from an earlier one"
        )


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{what}: tensor '{name}' holds {bad} NaN or infinite value(s) of {tensor.numel()}; these weights "
                "come from a diverged run. Use an earlier checkpoint"
            )


def clean_stale(ckpt_root: Path) -> list[Path]:
    """Remove the temporary and replaced step folders a killed process left behind (call with the run's lock
    held, so no other process is writing them)."""
    stale = [p for pattern in (".tmp-*", ".old-*") for p in ckpt_root.glob(pattern)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def mark_best(ckpt_root: Path, step: int) -> None:
    atomic_symlink(step_dir_name(step), ckpt_root / "best")


def prune(ckpt_root: Path, keep_last: int, keep_every: int | None = None) -> None:
    """Delete all but the newest `keep_last` step folders, never the one `best` or `last` points to, nor a step that
    is a multiple of `keep_every`."""
    protected = {os.path.realpath(ckpt_root / name) for name in ("best", "last") if (ckpt_root / name).exists()}
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in steps[:-keep_last]:
        milestone = keep_every and (step := step_of(old)) is not None and step % keep_every == 0
        if os.path.realpath(old) not in protected and not milestone:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in ckpt_root.glob(".tmp-*"):  # from a process killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)


def find_checkpoint(path: str | Path) -> Path:
    """Accepts a run directory, its checkpoints/ folder, or a checkpoint folder; returns the checkpoint folder."""
    path = Path(path)
    for candidate in (path, path / "checkpoints" / "last", path / "last"):
        if (candidate / MODEL_FILE).is_file():
            return candidate
    # `last` may be missing if a run was killed before its first save completed; fall back to the newest step.
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted(p for p in root.glob("step-*") if (p / META_FILE).is_file())
    if steps:
        return steps[-1]
    foreign = (path / "config.json").is_file() or path.suffix in (".pth", ".pt") or any(path.glob("*.pth"))
    hint = (
        f"; it looks like a HuggingFace or official MAE checkpoint: convert it with `mimkit import {path} --out RUN`, "
        "then use RUN"
        if foreign
        else ""
    )
    raise CheckpointError(
        f"no checkpoint in '{path}' (expected {MODEL_FILE} in a checkpoint folder, or a run "
        f"directory with checkpoints/last){hint}"
    )


def load_weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights, verified against their recorded SHA-256 and refused if not finite."""
    verify_file(ckpt_dir, MODEL_FILE)
    try:
        weights = load_file(str(ckpt_dir / MODEL_FILE))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint weights '{ckpt_dir / MODEL_FILE}' are corrupt or unreadable ({err}). "
            "Delete that checkpoint folder to resume from an earlier one, or start a new run "
            "directory."
        ) from None
    check_finite(weights, f"checkpoint '{ckpt_dir}'")
    return weights


def load_train_state(ckpt_dir: Path) -> dict[str, Any] | None:
    path = ckpt_dir / STATE_FILE
    if not path.is_file():
        return None
    verify_file(ckpt_dir, STATE_FILE)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a corrupt file to the user
        raise CheckpointError(
            f"training state '{path}' is corrupt or unreadable ({type(err).__name__}: {err}). "
            "Delete that checkpoint folder to resume from an earlier one."
        ) from None


def load_meta(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / META_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint metadata '{path}' is missing or corrupt ({err})") from None
