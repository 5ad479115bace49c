"""Start-up (issue 22): `--help` and config errors answer without importing torch, timm, numpy or matplotlib, which
take seconds to load; they are imported once a command is known to run. Checked by the modules a fresh interpreter
has loaded, not by a timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "timm", "torchvision", "numpy", "matplotlib", "scipy", "safetensors")

PROBE = """
import json, sys
from mimkit.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "heavy": sorted({m.split('.')[0] for m in sys.modules} & set(HEAVY))}))
"""


def _run(tmp_path, *argv: str) -> dict:
    script = f"HEAVY = {HEAVY!r}\n{PROBE}"
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"stderr": done.stderr}


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["pretrain", "--help"],
        ["pretrain", "--config", "mae_fmnist_tiny", "--set", "train.nope=1"],
        ["pretrain", "--config", "simmim_fmnist_tiny", "--set", "train.base_lr=-1"],
        ["pretrain", "--config", "mae_fmnist_tiny", "--set", "method.mask_ratio=0.999"],
        ["finetune", "--init", "scratch", "--set", "data.img_size=33"],
        ["distill", "--config", "distill_fmnist_tiny", "--set", "distill.targets=qk+nope"],
        ["linprobe", "--init", "scratch", "--set", "probe.nope=1"],
        ["knn", "--init", "scratch", "--set", "train.nope=1"],
        ["compare", "--init", "a=scratch", "--set", "train.nope=1"],
        ["analyze", "cka", "--model", "a=scratch", "--set", "train.nope=1"],
        ["sweep", "--config", "sweeps/scaling_fmnist", "--set", "train.nope=1"],
    ],
    ids=lambda argv: " ".join(argv[:2]) + (f" {argv[-1]}" if len(argv) > 2 else ""),
)
def test_help_and_config_errors_import_no_heavy_library(tmp_path, argv):
    if argv[-1] != "--help":
        argv = [*argv, "--out", str(tmp_path / "run")]
    result = _run(tmp_path, *argv)
    expected = 0 if "--help" in argv else 2
    assert result["code"] == expected, result["stderr"]
    if expected == 2:
        assert "mimkit: error:" in result["stderr"] and "Traceback" not in result["stderr"]
    assert result["heavy"] == [], f"{' '.join(argv)} imported {result['heavy']}"


def test_method_packages_load_their_models_on_first_use(tmp_path):
    """`import mimkit.methods` (what the config needs) leaves torch unloaded; reading a class loads it; dir() lists
    both kinds of name; an unknown name is an AttributeError, as for any module."""
    script = """
import sys
import mimkit.methods as methods
before = "torch" in sys.modules
names = dir(methods)
cls = methods.MAE
try:
    methods.Nope
    unknown = "no error"
except AttributeError as err:
    unknown = str(err)
print(before, "build_method" in names and "MAE" in names, cls.__module__, "torch" in sys.modules, unknown)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.stdout.split(maxsplit=4) == [
        "False",
        "True",
        "mimkit.methods.mae.model",
        "True",
        "module 'mimkit.methods' has no attribute 'Nope'\n",
    ], done.stderr
