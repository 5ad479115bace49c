"""Checkpoint integrity (issue 20, item 3): recorded SHA-256 verified before use, non-finite weights refused on
resume and as an init, a non-finite guard that only names a checkpoint saved before the bad streak (which then
resumes cleanly), stale temporary folders cleaned at start, and foreign or damaged weights as one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, cli_error, nonfinite_losses, sets, tiny_engine
from mimkit.config import load_config
from mimkit.engine import checkpoint as ckpt
from mimkit.engine.trainer import NonFiniteLossError


def _trained_run(tmp_path, steps=4):
    from mimkit.training import pretrain

    run = tmp_path / "run"
    pretrain(load_config(None, [*TINY, f"train.steps={steps}"]), run)
    return run, ckpt.find_checkpoint(run)


def _resume_args(run, steps):
    return ["pretrain", "--config", "mae_fmnist_tiny", "--out", str(run), *sets([*TINY, f"train.steps={steps}"])]


def test_meta_records_the_sha256_of_each_checkpoint_file(tmp_path):
    _, folder = _trained_run(tmp_path)
    sums = json.loads((folder / ckpt.META_FILE).read_text())["sha256"]
    assert set(sums) == {ckpt.MODEL_FILE, ckpt.STATE_FILE}
    for name, digest in sums.items():
        assert ckpt.file_sha256(folder / name) == digest and len(digest) == 64


def test_a_flipped_byte_in_the_tensor_data_is_refused_before_use(capsys, tmp_path):
    run, folder = _trained_run(tmp_path)
    data = bytearray((folder / ckpt.MODEL_FILE).read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's data: still a well-formed safetensors file
    (folder / ckpt.MODEL_FILE).write_bytes(bytes(data))
    load_file(str(folder / ckpt.MODEL_FILE))  # safetensors alone would load it without complaint
    err = cli_error(capsys, *_resume_args(run, 8))
    assert "does not match the SHA-256" in err and ckpt.MODEL_FILE in err
    assert "does not match the SHA-256" in cli_error(
        capsys, "finetune", "--init", str(run), "--out", str(tmp_path / "f")
    )


def test_a_damaged_training_state_is_refused(capsys, tmp_path):
    run, folder = _trained_run(tmp_path)
    state = bytearray((folder / ckpt.STATE_FILE).read_bytes())
    state[len(state) // 2] ^= 0xFF
    (folder / ckpt.STATE_FILE).write_bytes(bytes(state))
    err = cli_error(capsys, *_resume_args(run, 8))
    assert "does not match the SHA-256" in err and ckpt.STATE_FILE in err


def _replace_weights(folder, change):
    """Rewrite a checkpoint's weights and the checksum that goes with them (a checkpoint saved that way)."""
    weights = load_file(str(folder / ckpt.MODEL_FILE))
    save_file(change(weights), str(folder / ckpt.MODEL_FILE), metadata={"format": "pt"})
    meta = json.loads((folder / ckpt.META_FILE).read_text())
    meta["sha256"][ckpt.MODEL_FILE] = ckpt.file_sha256(folder / ckpt.MODEL_FILE)
    (folder / ckpt.META_FILE).write_text(json.dumps(meta))


def test_nan_weights_are_refused_on_resume_and_as_an_init(capsys, tmp_path):
    run, folder = _trained_run(tmp_path)
    _replace_weights(
        folder, lambda w: {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in w.items()}
    )
    err = cli_error(capsys, *_resume_args(run, 8))
    assert "NaN or infinite" in err
    assert "NaN or infinite" in cli_error(capsys, "knn", "--init", str(run), "--out", str(tmp_path / "k"), *sets(TINY))
    exported = tmp_path / "enc.safetensors"
    run2, folder2 = _trained_run(tmp_path / "second")
    from mimkit.cli import main

    assert main(["export", str(run2), "--out", str(exported)]) == 0
    weights = load_file(str(exported))
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first] = weights[first].clone()
    weights[first].view(-1)[0] = float("inf")
    save_file(weights, str(exported))
    err = cli_error(capsys, "finetune", "--init", str(exported), "--out", str(tmp_path / "ft"), *sets(TINY))
    assert f"tensor '{first}'" in err and "NaN or infinite" in err


def test_a_checkpoint_with_a_wrong_shaped_tensor_is_a_clear_error(capsys, tmp_path):
    run, folder = _trained_run(tmp_path)

    def widen(weights):
        key = next(k for k in weights if k.endswith("pos_embed"))
        weights[key] = torch.zeros(1, weights[key].shape[1] + 1, weights[key].shape[2])
        return weights

    _replace_weights(folder, widen)
    err = cli_error(capsys, "finetune", "--init", str(run), "--out", str(tmp_path / "f"), *sets(TINY))
    assert "does not fit the model" in err


def test_a_damaged_export_or_sidecar_is_a_clear_error(capsys, tmp_path):
    run, _ = _trained_run(tmp_path)
    exported = tmp_path / "enc.safetensors"
    from mimkit.cli import main

    assert main(["export", str(run), "--out", str(exported)]) == 0
    sidecar = exported.with_suffix(".safetensors.json")
    good_sidecar = sidecar.read_text()
    sidecar.write_text("{not json")
    args = ["finetune", "--init", str(exported), "--out", str(tmp_path / "f"), *sets(TINY)]
    assert "is not the sidecar" in cli_error(capsys, *args)
    sidecar.write_text(good_sidecar)
    exported.write_bytes(exported.read_bytes()[:100])  # truncated
    assert "not a readable safetensors file" in cli_error(capsys, *args)


def test_stale_temporary_folders_are_cleaned_when_a_run_starts(tmp_path):
    run, folder = _trained_run(tmp_path)
    for name in (".tmp-step-0000006-999", ".old-step-0000004-999"):
        (folder.parent / name).mkdir()
        (folder.parent / name / ckpt.MODEL_FILE).write_bytes(b"half")
    from mimkit.training import pretrain

    pretrain(load_config(None, [*TINY, "train.steps=6"]), run)
    assert not list(folder.parent.glob(".tmp-*")) and not list(folder.parent.glob(".old-*"))


def test_the_nonfinite_guard_names_a_checkpoint_saved_before_the_streak_and_it_resumes(tmp_path):
    """Steps 6-8 are non-finite with a checkpoint due at every even step: none is written during the streak, the
    error names step 4's, and a run resumed from it trains to the end."""
    run = tmp_path / "run"
    extra = (
        "train.steps=12",
        "train.ckpt_every=2",
        "train.eval_every=100",
        "train.max_nonfinite=3",
        "train.keep_last=9",
    )
    engine, method = tiny_engine(run, *extra)
    with nonfinite_losses(method, lambda n: n >= 6):
        with pytest.raises(
            NonFiniteLossError, match=r"steps 6-8\); stopping\. Last good checkpoint, saved before step 6"
        ):
            engine.fit()
    saved = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert saved == ["step-0000002", "step-0000004"]  # no checkpoint at step 6, inside the streak
    assert ckpt.find_checkpoint(run).resolve().name == "step-0000004"
    state = ckpt.load_train_state(ckpt.find_checkpoint(run))
    assert int(state["nonfinite"]) == 0
    engine, method = tiny_engine(run, *extra)
    assert engine.fit().step == 12
    assert all(torch.isfinite(p).all() for p in method.parameters())


def test_checkpoint_and_export_files_get_the_runs_permissions(tmp_path):
    from mimkit.engine.atomic import default_file_mode

    run, folder = _trained_run(tmp_path)
    mode = default_file_mode()
    for path in (folder / ckpt.MODEL_FILE, folder / ckpt.STATE_FILE, folder / ckpt.META_FILE, run / "config.yaml"):
        assert path.stat().st_mode & 0o777 == mode, path
    from mimkit.cli import main

    assert main(["export", str(run), "--out", str(tmp_path / "enc.safetensors")]) == 0
    assert (tmp_path / "enc.safetensors").stat().st_mode & 0o777 == mode
