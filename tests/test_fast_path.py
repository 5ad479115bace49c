"""The fast path of the training loop: no host synchronisation inside the step loop, non-finite steps skipped on
the device, activation checkpointing (same gradients, blocks recomputed), the torch.compile switch."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from conftest import tiny_config, tiny_engine
from mimkit.config import ConfigError, resolved
from mimkit.engine import trainer
from mimkit.methods import build_method

HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__")
HOST_SIDE = os.path.join("torch", "utils", "data", "distributed.py")


@pytest.mark.parametrize("method", ["mae", "simmim"])
def test_no_host_sync_inside_the_step_loop(tmp_path, monkeypatch, method):
    """Every step reads nothing back from the device; only the log/eval/checkpoint steps do (once each). On CPU every
    tensor is a host tensor, so the sampler's epoch permutation (host-side by construction) is not counted."""
    engine, _ = tiny_engine(
        tmp_path,
        f"method.name={method}",
        "train.steps=8",
        "train.log_every=4",
        "train.eval_every=100",
        "train.ckpt_every=100",
        "train.clip_grad=1.0",
    )
    reads = {"n": 0}
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            if not sys._getframe(1).f_code.co_filename.endswith(HOST_SIDE):
                reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    in_steps = []
    original_step = engine.train_step

    def step(index):
        before = reads["n"]
        stats = original_step(index)
        in_steps.append(reads["n"] - before)
        return stats

    settles = []
    original_settle = engine._settle
    monkeypatch.setattr(engine, "train_step", step)
    monkeypatch.setattr(
        engine, "_settle", lambda pending, interval: (settles.append(len(pending)), original_settle(pending, interval))
    )
    engine.fit()
    assert in_steps == [0] * 8
    assert settles == [4, 4]  # one transfer per log interval (steps 4 and 8)


def test_nonfinite_step_is_skipped_on_the_device():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.ones(3)
    trainer.skip_if_nonfinite_step(opt, torch.tensor(False))
    assert torch.equal(p.detach(), torch.ones(3))
    trainer.skip_if_nonfinite_step(opt, torch.tensor(True))
    assert (p.detach() < 1).all() and float(opt.state[p]["step"]) == 1.0
    moved = p.detach().clone()
    trainer.skip_if_nonfinite_step(opt, torch.tensor(False))
    assert torch.equal(p.detach(), moved) and float(opt.state[p]["step"]) == 1.0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_norm", [0.05, 1e6, None])
def test_clipping_folded_into_the_fused_step_matches_torch_clipping(fused, max_norm, device):
    """clip_gradients + skip_if_nonfinite_step (the fused step divides by the clip factor) give the weights of
    torch's clip_grad_norm_ followed by the step, over three steps of AdamW."""
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).to(device)
    mine = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).to(device)
    mine.load_state_dict(ref.state_dict())
    opts = [torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.05, fused=fused) for m in (ref, mine)]
    for step in range(3):
        x = torch.randn(32, 8, device=device)
        for m in (ref, mine):
            m(x).square().mean().mul(100).backward()
        want = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm if max_norm is not None else float("inf"))
        opts[0].step()
        norm, scale = trainer.clip_gradients(opts[1], list(mine.parameters()), max_norm)
        assert torch.allclose(norm, want)
        if fused and max_norm is not None:  # left to the step, which divides by it
            assert scale is not None and (scale > 1).item() == (max_norm < 1)
        else:
            assert scale is None
        trainer.skip_if_nonfinite_step(opts[1], torch.tensor(True, device=device), scale)
        assert not hasattr(opts[1], "grad_scale")  # nothing left behind for the next step
        for o in opts:
            o.zero_grad(set_to_none=True)
        for a, b in zip(ref.parameters(), mine.parameters()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (step, fused, max_norm)


@pytest.mark.parametrize("method", ["mae", "simmim"])
def test_activation_checkpointing_same_gradients_blocks_recomputed(method):
    grads, calls = {}, {}
    for flag in (False, True):
        cfg = resolved(tiny_config(f"method.name={method}", f"train.grad_checkpointing={str(flag).lower()}"))
        torch.manual_seed(0)
        model = build_method(cfg).train()
        count = {"n": 0}
        model.encoder.blocks[0].register_forward_pre_hook(lambda *_: count.__setitem__("n", count["n"] + 1))
        batch = {"images": torch.randn(4, 1, 16, 16), "keys": torch.arange(4)}
        model(batch)["loss"].backward()
        grads[flag] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        calls[flag] = count["n"]
    assert calls == {False: 1, True: 2}  # the checkpointed block runs again in the backward pass
    assert grads[False].keys() == grads[True].keys()
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_compiled_training_matches_eager(tmp_path, monkeypatch):
    """train.compile=true trains through torch.compile (graph capture checked with the aot_eager backend, which
    skips code generation) and ends where the eager run ends."""
    monkeypatch.setattr(trainer, "COMPILE_BACKEND", "aot_eager")
    weights = {}
    for flag in ("false", "true"):
        engine, method = tiny_engine(
            tmp_path / flag, f"train.compile={flag}", "train.steps=3", "train.eval_every=100", "train.ckpt_every=100"
        )
        assert (engine.forward_model is not engine.model) == (flag == "true")
        engine.fit()
        weights[flag] = {k: v.detach().clone() for k, v in method.state_dict().items()}
    for key, value in weights["false"].items():
        torch.testing.assert_close(weights["true"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_compile_setting_is_checked(monkeypatch):
    with pytest.raises(ConfigError, match="train.compile"):
        resolved(tiny_config("train.compile=maybe"))
    assert resolved(tiny_config("train.compile=reduce-overhead")).train.compile == "reduce-overhead"
    cpu = torch.device("cpu")
    assert trainer.compile_model(torch.nn.Linear(2, 2), "auto", cpu).__class__ is torch.nn.Linear
    monkeypatch.setattr(trainer, "COMPILE_BACKEND", "aot_eager")  # a mode name compiles (mode left to inductor)
    assert trainer.compile_model(torch.nn.Linear(2, 2), "reduce-overhead", cpu).__class__ is not torch.nn.Linear


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["mae", "simmim"])
def test_cuda_step_loop_never_synchronises(tmp_path, method):
    """torch's sync debug mode turns any device-to-host wait inside a training step into an error."""
    engine, _ = tiny_engine(
        tmp_path,
        "device=cuda",
        f"method.name={method}",
        "train.precision=bf16",
        "train.clip_grad=1.0",
        "train.steps=6",
        "train.log_every=3",
    )
    engine.train_step(0)  # first step: lazy optimizer state and cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            engine.train_step(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_cuda_compiled_and_checkpointed_training_runs(tmp_path):
    """Failed once on an H200 after the other GPU-marked tests and passed alone (its message was lost): dynamo's
    caches are reset first so that the compiled functions of earlier tests cannot leak into this one."""
    torch._dynamo.reset()
    for extra in (["train.compile=true"], ["train.grad_checkpointing=true"]):
        engine, method = tiny_engine(tmp_path / extra[0], "device=cuda", "train.steps=4", *extra)
        engine.fit()
        assert all(torch.isfinite(p).all() for p in method.parameters())


def test_checkpointing_keeps_fewer_activations_which_grow_with_the_batch():
    from mimkit.bench.memory import saved_activation_bytes

    saved = {}
    for flag in (False, True):
        cfg = resolved(
            tiny_config("method.name=mae", f"train.grad_checkpointing={str(flag).lower()}", "model.name=mim_vit_pico")
        )
        model = build_method(cfg).train()
        for batch in (4, 8):
            inputs = {"images": torch.randn(batch, 1, 16, 16), "keys": torch.arange(batch)}
            saved[flag, batch] = saved_activation_bytes(lambda: model(inputs)["loss"], exclude=model)
    assert saved[False, 8] == pytest.approx(2 * saved[False, 4], rel=0.1)
    assert saved[True, 4] < 0.5 * saved[False, 4]  # only block inputs are kept through 6 checkpointed blocks


def test_bench_memory_estimates_a_config(capsys, monkeypatch):
    import mimkit.summary
    from mimkit.cli import main

    monkeypatch.setattr(mimkit.summary, "JSON_OUTPUT", False)  # restored after --json sets it
    argv = ["bench", "memory", "--config", "mae_fmnist_tiny", "--batch", "64", "--set", "device=cpu"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1 and "GB" in line  # a summary, not the JSON
    assert main(["--json", *argv]) == 0
    est = __import__("json").loads(capsys.readouterr().out)
    assert est["batch"] == 64 and est["precision"] == "bf16" and f"about {est['total_gb']:.1f} GB" in line
    assert est["total_gb"] == pytest.approx(
        est["state_gb"] + est["fixed_saved_gb"] + 64 * est["activations_gb_per_image"]
    )


# ----------------------------------------------------------------------------------------------- train.fast_path
def _tiny_method(name: str, *extra: str):
    torch.manual_seed(0)
    return build_method(resolved(tiny_config(f"method.name={name}", "method.mask_patch_size=8", *extra))).eval()


def _batch(method) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {"images": torch.randn(4, method.chans, 16, 16, generator=gen), "keys": torch.arange(4)}


def _plain_loss(method, batch) -> torch.Tensor:
    """The loss as forward_mim / forward_loss compute it, for the batch's own masks."""
    if method.name == "mae":
        return method.forward_mim(batch["images"], method.mask_generator.noise(batch["keys"], method.seed)).loss
    return method.forward_mim(batch["images"], method.mask_generator(batch["keys"], method.seed)).loss


@pytest.mark.parametrize("name", ["mae", "simmim", "mocov3"])
def test_train_fast_path_reaches_the_method_and_plain_path_restores_it(name):
    assert _tiny_method(name).fast_path is True
    method = _tiny_method(name, "train.fast_path=false")
    assert method.fast_path is False
    method.fast_path = True
    with method.plain_path() as same:
        assert same is method and method.fast_path is False
    assert method.fast_path is True
    with pytest.raises(ConfigError, match="train.fast_path"):
        resolved(tiny_config("train.fast_path=sometimes"))


@pytest.mark.parametrize("name", ["mae", "simmim"])
def test_both_paths_train_on_the_loss_forward_loss_defines(name):
    method = _tiny_method(name)
    batch = _batch(method)
    fast = method(batch)["loss"]
    with method.plain_path():
        plain = method(batch)["loss"]
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain, _plain_loss(method, batch), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["mae", "simmim"])
def test_an_edited_forward_loss_is_the_loss_that_trains(name):
    """A researcher who changes forward_loss changes training: the fast path, which computes the original loss
    fused, steps aside for a subclass that replaces it."""
    method = _tiny_method(name)
    batch = _batch(method)
    original = method(batch)["loss"]
    base = type(method)

    class Edited(base):
        def forward_loss(self, imgs, pred, mask):
            return 3.0 * base.forward_loss(self, imgs, pred, mask) + 1.0

    method.__class__ = Edited
    assert method.fast_path  # the switch is on, yet the edited loss trains
    torch.testing.assert_close(method(batch)["loss"], 3.0 * original + 1.0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(method(batch)["loss"], _plain_loss(method, batch))


def test_a_simmim_head_the_fast_path_does_not_assume_trains_as_written():
    """The fast path runs SimMIM's head as the linear layer a 1x1 conv is; any other head gets the plain code."""
    from mimkit.methods.simmim import is_linear_pixel_head

    method = _tiny_method("simmim")
    assert is_linear_pixel_head(method.decoder)
    conv = method.decoder[0]
    torch.manual_seed(3)
    method.decoder = torch.nn.Sequential(
        torch.nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1), torch.nn.PixelShuffle(method.patch)
    )
    assert not is_linear_pixel_head(method.decoder)
    batch = _batch(method)
    torch.testing.assert_close(method(batch)["loss"], _plain_loss(method, batch))
    for changed in (
        torch.nn.Sequential(conv),
        torch.nn.Sequential(
            torch.nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=False, groups=1, stride=2),
            torch.nn.PixelShuffle(method.patch),
        ),
    ):
        assert not is_linear_pixel_head(changed)
