"""Fault injection (issue 20): hostile configs and files, unusable output paths, failures the CLI must turn into one
line and an exit code, two processes on one run directory, and metrics that stay clean after a kill."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, cli_env, cli_error, nonfinite_losses, sets
from mimkit.config import ConfigError, load_config, resolved
from mimkit.engine.metrics import read_metrics
from mimkit.engine.run_dir import LOCK_NAME, RunDirInUse, run_dir_lock


def _leaf_keys(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaf_keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


# Hostile values for every key: wrong types, out-of-range numbers, a 70-bit integer, NaN and infinity, containers.
HOSTILE = ["-1", "0", "1e30", "abc", "[]", "{}", "true", "1180591620717411303424", ".nan", "-.inf", "[1,2,3]"]


def test_config_fuzzer_every_key_and_hostile_value_is_refused_by_name_or_resolves():
    """Each (key, value) either loads and resolves, or fails with a ConfigError that names the key or its section;
    no other exception escapes the config layer (the CLI turns ConfigError into exit 2 and one line)."""
    keys = list(_leaf_keys(load_config(None, TINY)))
    cases = [(k, v) for k in keys for v in HOSTILE]
    assert len(cases) >= 200
    refused = 0
    for key, value in cases:
        try:
            resolved(load_config(None, [*TINY, f"{key}={value}"]))
        except ConfigError as err:
            refused += 1
            text = str(err)
            assert key.rsplit(".", 1)[-1] in text or key.split(".")[0] in text, (key, value, text)
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{key}={value}: {type(err).__name__}: {err}")
    assert refused > len(cases) // 2  # most hostile values are nonsense, and refused


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("seed", "1180591620717411303424", "64-bit"),
        ("method.mask_patch_size", "0", "method.mask_patch_size"),
        ("data.synthetic_size", "-5", "data.synthetic_size"),
        ("data.img_size", "100000", "data.img_size"),
        ("train.min_lr", "10", "train.min_lr"),
        ("train.warmup_epochs", "-1", "train.warmup_epochs"),
        ("data.std", "[0]", "data.std"),
        ("data.std", "[-1]", "data.std"),
        ("model.depth", "1000000000", "parameters"),
        ("probe.weight_decay", "-1", "probe.weight_decay"),
        ("distill.teacher_depth", "-3", "distill.teacher_depth"),
    ],
)
def test_nonsense_the_probe_found_is_refused(key, value, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        resolved(load_config(None, [*TINY, f"{key}={value}"]))


def test_integral_floats_are_integers():
    cfg = load_config(None, [*TINY, "train.steps=1e3"])  # YAML 1.1 reads 1e3 as a string
    assert cfg.train.steps == 1000 and isinstance(cfg.train.steps, int)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"- a\n- b\n", "mapping"),
        (b"hello\n", "mapping"),
        (b"seed: 0\n# \xff\xfe\n", "not UTF-8"),
        (b"data: 5\n", "data"),
        (b"seed: [1\n", "not valid YAML"),
    ],
)
def test_config_files_that_are_not_mappings_of_sections_fail_in_one_line(capsys, tmp_path, content, problem):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    err = cli_error(capsys, "pretrain", "--config", str(path), "--out", str(tmp_path / "run"), *sets(["seed=1"]))
    assert problem in err


def test_unusable_output_paths_fail_before_any_work(capsys, tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    args = ["pretrain", "--config", "mae_fmnist_tiny", *sets(TINY)]
    assert "is a file" in cli_error(capsys, *args, "--out", str(a_file))
    assert "lies under" in cli_error(capsys, *args, "--out", str(a_file / "sub"))
    assert "--out is empty" in cli_error(capsys, *args, "--out", "")
    assert "is a directory" in cli_error(capsys, "export", str(tmp_path), "--out", str(tmp_path))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        assert "not writable" in cli_error(capsys, *args, "--out", str(locked / "run"))
    assert a_file.read_text() == "x"


def test_data_root_is_never_silently_replaced(capsys, tmp_path):
    args = ["pretrain", "--config", "mae_fmnist_tiny", "--out", str(tmp_path / "r")]
    err = cli_error(capsys, *args, *sets(["data.root=/nonexistent/fmnist"]))
    assert "data.root '/nonexistent/fmnist' does not exist" in err
    err = cli_error(capsys, *args, *sets([*TINY, f"data.root={tmp_path}"]))
    assert "data.name=synthetic makes its own images" in err


def test_fewer_training_images_than_classes_is_refused_with_the_count(capsys, tmp_path):
    err = cli_error(
        capsys,
        "knn",
        "--init",
        "scratch",
        "--out",
        str(tmp_path / "r"),
        *sets([*TINY, "data.synthetic_size=40", "data.fraction=0.05"]),
    )
    assert "data.fraction=0.05 of " in err and "fewer than the 10 classes" in err


def test_unexpected_failures_are_one_line_with_an_exit_code_and_debug_shows_the_traceback(capsys, monkeypatch):
    import mimkit.cli as cli

    def broken(_args):
        raise ValueError("something no check foresaw")

    build = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", _parser_with(build, {"recipes": broken}))
    assert cli.main(["recipes"]) == 70
    err = capsys.readouterr().err
    assert "internal error: ValueError: something no check foresaw" in err and "--debug" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert cli.main(["--debug", "recipes"]) == 70
    assert "Traceback" in capsys.readouterr().err
    assert cli.main(["recipes", "--debug"]) == 70  # after the command too
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MIMKIT_DEBUG", "1")
    assert cli.main(["recipes"]) == 70
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("MIMKIT_DEBUG")

    def disk_full(_args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/.tmp-step-0000010")

    monkeypatch.setattr(cli, "build_parser", _parser_with(build, {"recipes": disk_full}))
    assert cli.main(["recipes"]) == 74
    err = capsys.readouterr().err
    assert "No space left on device '/runs/x/checkpoints/.tmp-step-0000010'" in err and "resumes" in err


def test_a_signal_or_a_non_finite_stop_inside_any_command_keeps_its_exit_code(capsys, monkeypatch):
    """Commands that train without going through the training outcome (compare, a distillation chain's steps) still
    report an interruption as one, not as an internal error."""
    import mimkit.cli as cli
    from mimkit.engine.trainer import Interrupted, NonFiniteLossError

    def stopped(_args):
        raise Interrupted("SIGTERM", 143, step=241)

    def diverged(_args):
        raise NonFiniteLossError("stopped after 3 non-finite steps in a row")

    build = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", _parser_with(build, {"recipes": stopped}))
    assert cli.main(["recipes"]) == 143
    err = capsys.readouterr().err
    assert "SIGTERM received: checkpoint saved at step 241; re-run the same command to resume" in err
    assert "internal error" not in err
    monkeypatch.setattr(cli, "build_parser", _parser_with(build, {"recipes": diverged}))
    assert cli.main(["recipes"]) == 3
    assert "non-finite" in capsys.readouterr().err


def _parser_with(build, funcs):
    def patched():
        parser = build()
        sub = next(a for a in parser._actions if a.dest == "command")
        for name, func in funcs.items():
            sub.choices[name].set_defaults(func=func)
        return parser

    return patched


def _hold_lock_in_another_process(run_dir):
    code = (
        "import sys, time\n"
        "from mimkit.engine.run_dir import run_dir_lock\n"
        f"with run_dir_lock({str(run_dir)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=cli_env(), stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_one_run_directory_stops_naming_the_holder(capsys, tmp_path):
    run = tmp_path / "run"
    holder = _hold_lock_in_another_process(run)
    try:
        args = ["pretrain", "--config", "mae_fmnist_tiny", "--out", str(run), *sets([*TINY, "train.steps=2"])]
        err = cli_error(capsys, *args)
        assert f"PID {holder.pid}" in err and "in use" in err
        assert not (run / "metrics.jsonl").exists() and not (run / "config.yaml").exists()
        with pytest.raises(RunDirInUse):  # the API takes the same lock
            from mimkit.training import pretrain

            pretrain(load_config(None, [*TINY, "train.steps=2"]), run)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel dropped the killed holder's lock: the next run is not blocked by the stale file
    assert (run / LOCK_NAME).exists()
    from mimkit.cli import main

    assert main(args) == 0
    assert int((run / LOCK_NAME).read_text()) == os.getpid()


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    with run_dir_lock(tmp_path / "r"):
        with run_dir_lock(tmp_path / "r"):  # compare runs pretrain() inside a locked command
            pass
    holder = _hold_lock_in_another_process(tmp_path / "r")  # released: another process can take it
    holder.send_signal(signal.SIGKILL)
    holder.wait()


def test_a_run_killed_before_its_first_checkpoint_starts_metrics_over(tmp_path):
    """Rows of a killed attempt with no checkpoint are dropped on the next start, not duplicated."""
    from mimkit.training import pretrain

    run = tmp_path / "run"
    run.mkdir()
    stale = [{"event": "eval", "split": "heldout", "step": 0, "loss": 9.0}, {"event": "train", "step": 2, "loss": 8}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale) + '{"event": "tr')
    pretrain(load_config(None, [*TINY, "train.steps=4"]), run)
    records = read_metrics(run / "metrics.jsonl")
    heldout_steps = [r["step"] for r in records if r.get("split") == "heldout"]
    assert heldout_steps == sorted(set(heldout_steps)) and heldout_steps[0] == 0
    assert all(r.get("loss") != 9.0 for r in records)


def test_an_interval_of_only_skipped_steps_logs_a_null_loss(tmp_path):
    from conftest import tiny_engine

    engine, method = tiny_engine(tmp_path / "run", "train.steps=6", "train.log_every=2", "train.max_nonfinite=5")
    with nonfinite_losses(method, lambda n: n in (3, 4)):
        engine.fit()
    train = {r["step"]: r for r in read_metrics(tmp_path / "run/metrics.jsonl") if r.get("event") == "train"}
    assert train[4]["loss"] is None  # steps 3-4: every step skipped, no loss to report
    assert train[2]["loss"] is not None and train[6]["loss"] is not None


def test_cli_failures_reach_the_user_without_a_traceback_through_a_real_interpreter(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mimkit", "pretrain", "--config", "mae_fmnist_tiny", "--out", str(tmp_path / "r")]
        + sets(["method.mask_patch_size=0"]),
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["mimkit: error: method.mask_patch_size: 0 must be positive or null"]


class _Payload:
    """A pickle that runs a shell command when loaded by a full unpickler."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_never_run_on_any_loading_command(capsys, tmp_path):
    """Every command that reads a pickle-based file (a checkpoint's state.pt on resume, an HF pytorch_model.bin or
    an official MAE .pth on import, a timm weights file as init or teacher) refuses the payload: exit 2, and the
    command it carries never runs."""
    import torch

    from mimkit.engine import checkpoint as ckpt
    from mimkit.training import pretrain

    marker = tmp_path / "PWNED"
    payload = {"model": _Payload(marker), "state_dict": _Payload(marker)}
    bad = tmp_path / "bad.pth"
    torch.save(payload, bad)

    run = tmp_path / "run"
    pretrain(load_config(None, [*TINY, "train.steps=2"]), run)  # a real run, its state.pt then replaced
    folder = ckpt.find_checkpoint(run)
    torch.save(payload, folder / ckpt.STATE_FILE)
    meta = json.loads((folder / ckpt.META_FILE).read_text())
    meta["sha256"][ckpt.STATE_FILE] = ckpt.file_sha256(folder / ckpt.STATE_FILE)  # the checksum is not the guard here
    (folder / ckpt.META_FILE).write_text(json.dumps(meta))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "vit_mae", "hidden_size": 64, "num_hidden_layers": 2}')
    torch.save(payload, hf / "pytorch_model.bin")

    commands = [
        ["pretrain", "--config", "mae_fmnist_tiny", "--out", str(run), *sets([*TINY, "train.steps=4"])],
        ["import", str(hf), "--out", str(tmp_path / "i1")],
        ["import", str(bad), "--format", "mae-pth", "--out", str(tmp_path / "i2")],
        ["finetune", "--init", f"timm:vit_tiny_patch16_224@{bad}", "--out", str(tmp_path / "f"), *sets(TINY)],
        ["distill", "--teacher", f"timm:vit_tiny_patch16_224@{bad}", "--out", str(tmp_path / "d"), *sets(TINY)],
    ]
    for args in commands:
        cli_error(capsys, *args)
        assert not marker.exists(), f"the payload ran: mimkit {' '.join(args[:3])}"
    torch.load(bad, weights_only=False)  # the control: a full unpickler does run the payload
    assert marker.exists()


def test_an_error_naming_a_path_of_non_utf8_bytes_is_still_one_printable_line(capsys, tmp_path):
    odd = tmp_path / os.fsdecode(b"missing-\xff")
    err = cli_error(
        capsys,
        "pretrain",
        "--config",
        "mae_fmnist_tiny",
        "--out",
        str(tmp_path / "r"),
        *sets([*TINY, "data.name=folder", f"data.root={odd}"]),
    )
    assert "missing-\\xff" in err
