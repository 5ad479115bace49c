"""MoCo v3: the symmetric InfoNCE loss against a written-out formula, the momentum schedule and EMA update, and a
short training run whose checkpoint the evaluation commands accept."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY, run_cli, sets, tiny_config
from mimkit.config import resolved
from mimkit.methods import MoCoV3, build_method
from mimkit.methods.mocov3 import contrastive_loss, momentum_at

MOCO = ["method.name=mocov3", "method.moco_dim=16", "method.moco_mlp_dim=32"]


def _two_view_batch(n: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"images": torch.randn(n, 1, 16, 16), "images2": torch.randn(n, 1, 16, 16)}


def test_contrastive_loss_matches_formula():
    torch.manual_seed(0)
    q, k = torch.randn(5, 8), torch.randn(5, 8)
    t = 0.2
    total = 0.0
    for i in range(5):
        qi = q[i] / q[i].norm()
        sims = torch.stack([qi @ (k[j] / k[j].norm()) for j in range(5)]) / t
        total += -(sims[i] - torch.logsumexp(sims, 0))
    expected = total / 5 * 2 * t
    assert contrastive_loss(q, k, t).item() == pytest.approx(expected.item(), rel=1e-5)
    # orthogonal unit keys matched to their queries: each row is -log(e^(1/T) / (e^(1/T) + 4)), times 2T
    e = torch.eye(5) * 10
    assert contrastive_loss(e, e, t).item() == pytest.approx(math.log1p(4 * math.exp(-1 / t)) * 2 * t, rel=1e-5)
    assert contrastive_loss(e, e[[1, 2, 3, 4, 0]], t).item() > 1.0


def test_momentum_schedule_rises_from_m0_to_one():
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)


def test_momentum_update_is_an_ema_of_the_online_weights():
    method = build_method(resolved(tiny_config(*MOCO)))
    assert isinstance(method, MoCoV3)
    assert not any(p.requires_grad for p in method.momentum_encoder.parameters())
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(torch.randn_like(p))
    online = dict(method.encoder.named_parameters())
    before = {n: p.clone() for n, p in method.momentum_encoder.named_parameters()}
    method.after_optimizer_step(step=9, total_steps=20)
    m = momentum_at(10, 20, 0.99)
    assert method.momentum == pytest.approx(m)
    for name, p in method.momentum_encoder.named_parameters():
        torch.testing.assert_close(p, m * before[name] + (1 - m) * online[name])


def test_forward_uses_both_views_symmetrically():
    method = build_method(resolved(tiny_config(*MOCO))).eval()
    x1, x2 = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    a = method({"images": x1, "images2": x2})["loss"]
    b = method({"images": x2, "images2": x1})["loss"]
    assert a.item() == pytest.approx(b.item(), rel=1e-5) and math.isfinite(a.item())


def test_mocov3_pretrain_then_knn(tmp_path):
    run_cli(
        "pretrain",
        "--config",
        "mocov3_fmnist_tiny",
        "--out",
        str(tmp_path / "moco"),
        *sets([*TINY, *MOCO, "train.steps=4"]),
        check=True,
    )
    res = json.loads((tmp_path / "moco/results.json").read_text())
    assert math.isfinite(res["final_heldout_loss"]) and "reconstructions" not in res
    run_cli(
        "knn",
        "--init",
        str(tmp_path / "moco"),
        "--out",
        str(tmp_path / "knn"),
        *sets(["data.name=synthetic", "data.synthetic_size=64"]),
        check=True,
    )
    assert 0 <= json.loads((tmp_path / "knn/knn.json").read_text())["top1"] <= 100


def test_official_stability_tricks_fix_the_position_embedding_and_freeze_a_random_patch_projection():
    from mimkit.models.pos_embed import sincos_2d

    cfg = resolved(tiny_config(*MOCO))
    assert cfg.method.moco_fixed_pos_embed and cfg.method.moco_frozen_patch_embed  # on by default, as published
    method = build_method(cfg)
    enc = method.encoder
    grid = cfg.data.img_size // cfg.model.patch_size
    torch.testing.assert_close(enc.pos_embed[0], sincos_2d(enc.embed_dim, grid, cls_token=True).float())
    proj = enc.patch_embed.proj
    bound = math.sqrt(6.0 / (cfg.data.in_chans * cfg.model.patch_size**2 + enc.embed_dim))
    assert proj.weight.abs().max() <= bound and proj.weight.abs().max() > 0.9 * bound  # Xavier uniform
    assert not proj.bias.any()
    frozen = {"encoder.pos_embed", "encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias"}
    trained = {id(p) for g in method.param_groups(0.1) for p in g["params"]}
    for name, p in method.named_parameters():
        if name in frozen:
            assert not p.requires_grad and id(p) not in trained, name
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    opt = torch.optim.AdamW(method.param_groups(0.1), lr=1e-2)
    method(_two_view_batch(8))["loss"].backward()
    opt.step()
    method.after_optimizer_step(0, 10)
    params = dict(method.named_parameters())
    for name in frozen:  # neither the online weights nor their momentum copies move
        assert torch.equal(params[name], before[name]), name
        copy = "momentum_" + name
        torch.testing.assert_close(params[copy], before[name])
    assert not torch.equal(params["encoder.blocks.0.attn.qkv.weight"], before["encoder.blocks.0.attn.qkv.weight"])


def test_stability_tricks_can_be_turned_off():
    method = build_method(
        resolved(tiny_config(*MOCO, "method.moco_fixed_pos_embed=false", "method.moco_frozen_patch_embed=false"))
    )
    assert method.encoder.pos_embed.requires_grad and method.encoder.patch_embed.proj.weight.requires_grad
