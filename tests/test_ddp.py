"""DDP through torchrun: 2 processes on gloo with per-rank batch B/2 end with the weights of 1 process with B."""

from __future__ import annotations

import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, cli_env, run_cli, sets
from mimkit.engine import checkpoint as ckpt

DDP_RUN = [*TINY, "train.steps=6", "train.batch_size=16", "train.eval_every=3", "train.ckpt_every=3"]


def test_two_process_gloo_matches_one_process(tmp_path):
    single = run_cli(
        "pretrain", "--config", "mae_fmnist_tiny", "--out", str(tmp_path / "one"), *sets(DDP_RUN), check=True
    )
    assert single.returncode == 0
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29531",
        "-m",
        "mimkit",
        "pretrain",
        "--config",
        "mae_fmnist_tiny",
        "--out",
        str(tmp_path / "two"),
        *sets(DDP_RUN),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    one = load_file(str(ckpt.find_checkpoint(tmp_path / "one") / ckpt.MODEL_FILE))
    two = load_file(str(ckpt.find_checkpoint(tmp_path / "two") / ckpt.MODEL_FILE))
    for key in one:
        a, b = one[key], two[key]
        if key.endswith("attn.qkv.bias"):
            # The key bias has an exactly-zero true gradient (softmax ignores a per-query constant), so its
            # gradient is float noise that Adam rescales to lr-sized steps: compare it only loosely.
            n = a.numel() // 3
            torch.testing.assert_close(b[n : 2 * n], a[n : 2 * n], atol=1e-4, rtol=0, msg=key)
            a, b = torch.cat([a[:n], a[2 * n :]]), torch.cat([b[:n], b[2 * n :]])
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=key)
    # and training really moved the weights (the comparison is not between two untouched inits)
    from mimkit.config import load_config, resolved
    from mimkit.methods import build_method

    torch.manual_seed(0)
    init = build_method(resolved(load_config(str(tmp_path / "one" / "config.yaml")))).state_dict()
    changed = sum(not torch.allclose(init[k], one[k]) for k in one)
    assert changed > len(one) // 2
    # metrics are written once (rank 0 only), held-out loss reduced over both ranks equals the 1-process value
    import json

    h1 = [json.loads(line) for line in (tmp_path / "one/metrics.jsonl").read_text().splitlines()]
    h2 = [json.loads(line) for line in (tmp_path / "two/metrics.jsonl").read_text().splitlines()]
    e1 = [(r["step"], r["loss"]) for r in h1 if r.get("split") == "heldout"]
    e2 = [(r["step"], r["loss"]) for r in h2 if r.get("split") == "heldout"]
    assert [s for s, _ in e1] == [s for s, _ in e2]
    for (_, a), (_, b) in zip(e1, e2):
        assert abs(a - b) < 1e-4


def test_mocov3_gathers_keys_across_two_processes(tmp_path):
    """Under DDP each rank's queries are contrasted with the keys of both ranks (all_gather), so the 2-process
    loss uses 2x the negatives and differs from 1 process, but stays finite and the run completes."""
    moco = [
        *TINY,
        "method.name=mocov3",
        "method.moco_dim=16",
        "method.moco_mlp_dim=32",
        "train.steps=3",
        "train.batch_size=16",
        "train.eval_every=3",
        "train.ckpt_every=3",
        "train.eval_samples=33",
        "train.eval_batch_size=8",
    ]  # uneven shards would hang a gathering evaluation
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "mimkit",
        "pretrain",
        "--config",
        "mocov3_fmnist_tiny",
        "--out",
        str(tmp_path / "moco"),
        *sets(moco),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    import math

    results = json.loads((tmp_path / "moco/results.json").read_text())
    assert math.isfinite(results["final_heldout_loss"])
    single = run_cli(
        "pretrain", "--config", "mocov3_fmnist_tiny", "--out", str(tmp_path / "one"), *sets(moco), check=True
    )
    assert single.returncode == 0

    def first_eval(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return next(json.loads(line)["loss"] for line in lines if '"heldout"' in line)

    assert abs(first_eval("moco") - first_eval("one")) < 1e-5  # step-0 held-out loss: same on 1 or 2 processes


def test_distillation_on_two_processes_matches_one(tmp_path):
    """Distillation under torchrun: the teacher stays outside DDP, the student's parts after the distilled block
    get no gradient (find_unused_parameters), and 2 gloo processes end with the student weights of 1 process."""
    from mimkit.config import load_config
    from mimkit.training import pretrain

    pretrain(
        load_config(None, [*TINY, "method.name=mae", "model.name=mim_vit_pico", "train.steps=2"]), tmp_path / "teacher"
    )
    # drop path off: its per-rank random masks differ between 1 and 2 processes (colour jitter is keyed by sample)
    run = [*DDP_RUN, "distill.teacher=" + str(tmp_path / "teacher"), "distill.targets=qk+vv", "model.drop_path=0"]
    single = run_cli("distill", "--out", str(tmp_path / "one"), *sets(run), check=True)
    assert single.returncode == 0
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29535",
        "-m",
        "mimkit",
        "distill",
        "--out",
        str(tmp_path / "two"),
        *sets(run),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_file(str(ckpt.find_checkpoint(tmp_path / "one") / ckpt.MODEL_FILE))
    two = load_file(str(ckpt.find_checkpoint(tmp_path / "two") / ckpt.MODEL_FILE))
    assert not any(k.startswith("teacher") for k in one)
    for key in one:
        a, b = one[key], two[key]
        if key.endswith("attn.qkv.bias"):  # the key bias: zero true gradient (see the MAE test above)
            n = a.numel() // 3
            torch.testing.assert_close(b[n : 2 * n], a[n : 2 * n], atol=1e-4, rtol=0, msg=key)
            a, b = torch.cat([a[:n], a[2 * n :]]), torch.cat([b[:n], b[2 * n :]])
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=key)


def _skip_decision(rank: int, port: int, out) -> None:
    import torch.distributed as dist

    from mimkit.engine.distributed import DistEnv, all_ranks_true

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    env = DistEnv(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
    finite_here = torch.tensor(rank == 0)  # a non-finite loss on rank 1 only
    out[rank] = bool(all_ranks_true(finite_here, env))
    dist.destroy_process_group()


def test_a_nonfinite_loss_on_one_rank_skips_the_step_on_every_rank():
    """Ranks must agree on skipping a step, or their weights drift apart (DDP never re-syncs parameters)."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_skip_decision, args=(29547, out), nprocs=2, join=True)
        assert dict(out) == {0: False, 1: False}
