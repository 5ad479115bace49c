"""Host malloc tuning: freed tensor memory is reused, so a training loop stops faulting in fresh pages."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mimkit.engine import host_malloc

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")

# Forward and backward of a small MLP stack, like a training step: its activations (6 MiB each) are allocated,
# read back and freed every round. Prints the minor page faults per round.
FAULTS = textwrap.dedent("""
    import json, resource
    import torch
    from torch import nn
    from mimkit.engine.host_malloc import tune_host_malloc
    state = tune_host_malloc()
    model = nn.Sequential(*[nn.Sequential(nn.LayerNorm(96), nn.Linear(96, 384), nn.GELU(), nn.Linear(384, 96))
                            for _ in range(3)])
    x = torch.randn(4096, 96)
    def rounds(n):
        for _ in range(n):
            model(x).square().mean().backward()
    rounds(3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(10)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    print(json.dumps({"state": state, "faults": faults}))
""")


def _faults(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MIMKIT_HOST_MALLOC"}
    if env_value is not None:
        env["MIMKIT_HOST_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt tuning is glibc's")
def test_tuned_process_reuses_freed_pages():
    default = _faults("0")
    tuned = _faults(None)
    assert default["state"] == "off" and tuned["state"] == "tuned"
    assert default["faults"] > 200, default  # glibc's default: the activations land on fresh pages every round
    assert tuned["faults"] < 0.05 * default["faults"], (tuned, default)


def test_off_switch_and_answer_is_remembered(monkeypatch):
    monkeypatch.setattr(host_malloc, "_state", None)
    monkeypatch.setenv("MIMKIT_HOST_MALLOC", "off")
    assert host_malloc.tune_host_malloc() == "off"
    monkeypatch.delenv("MIMKIT_HOST_MALLOC")
    assert host_malloc.tune_host_malloc() == "off"  # once per process: the first answer stands


@pytest.mark.skipif(not GLIBC, reason="mallopt tuning is glibc's")
def test_applies_on_glibc(monkeypatch):
    monkeypatch.setattr(host_malloc, "_state", None)
    monkeypatch.delenv("MIMKIT_HOST_MALLOC", raising=False)
    assert host_malloc.tune_host_malloc() == "tuned"


def test_not_linux_is_a_no_op(monkeypatch):
    monkeypatch.setattr(host_malloc, "_state", None)
    monkeypatch.delenv("MIMKIT_HOST_MALLOC", raising=False)
    monkeypatch.setattr(host_malloc.sys, "platform", "darwin")
    assert host_malloc.tune_host_malloc() == "not glibc"
