"""TinyMIM distillation: relation losses against a written-out KL, the Distill method (frozen teacher, head
matching, layer selection, zero loss for a copy of the teacher), end-to-end runs through the CLI (config, metrics,
reload without the teacher, export, fine-tuning), sequential chains that resume, clear errors, and the colour
jitter of the student's view."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY, cli_error, run_cli, sets, tiny_config
from mimkit.config import ConfigError, load_config, resolved
from mimkit.data.keyed_random import STREAM_JITTER, keyed_uniform
from mimkit.data.transforms import color_jitter
from mimkit.methods import Distill, build_method
from mimkit.methods.distill.options import parse_targets
from mimkit.methods.distill.relations import relation_losses, split_heads
from mimkit.methods.distill.vit_blocks import block_index

# The architecture of the tiny teacher (mim_vit_pico), as prepare_teacher records it.
PICO = ["distill.teacher_embed_dim=96", "distill.teacher_num_heads=3", "distill.teacher_depth=6"]
NO_MODEL = [o for o in TINY if not o.startswith("model.name=")]  # for --student (--set would win over it)
STEPS = ["train.steps=4", "train.eval_every=2", "train.ckpt_every=2"]


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny MAE-pretrained mim_vit_pico run (96 wide, 6 blocks, 3 heads)."""
    from mimkit.training import pretrain

    out = tmp_path_factory.mktemp("teacher") / "mae_pico"
    pretrain(load_config(None, [*TINY, "method.name=mae", "model.name=mim_vit_pico", *STEPS]), out)
    return out


@pytest.fixture(scope="module")
def teacher_encoder(teacher):
    """The teacher run's encoder, frozen, as a distillation run loads it."""
    from mimkit.methods.distill.teacher import load_teacher, prepare_teacher

    cfg, source = prepare_teacher(resolved(tiny_config("method.name=distill", f"distill.teacher={teacher}")))
    return load_teacher(cfg, source, torch.device("cpu"))


def distill_config(*extra: str):
    """A resolved distillation config for unit tests: the teacher's architecture is given directly (prepare_teacher
    fills it from distill.teacher in real runs)."""
    return resolved(tiny_config("method.name=distill", "distill.teacher=unused", "model.drop_path=0", *PICO, *extra))


def make_batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(n, 1, 16, 16, generator=gen), "keys": torch.arange(100, 100 + n)}


def with_teacher(method: Distill, teacher: nn.Module) -> Distill:
    method.attach_teacher(copy.deepcopy(teacher))
    return method


def qkv_from_timm_forward(vit: nn.Module, images: torch.Tensor, layer_index: int, heads: int):
    """q, k, v of block `layer_index` captured from timm's own forward pass (a hook on that block's qkv
    projection), split into `heads` heads the way timm's Attention splits them."""
    captured = {}
    handle = vit.blocks[layer_index].attn.qkv.register_forward_hook(lambda m, i, o: captured.setdefault("qkv", o))
    try:
        with torch.no_grad():
            vit.forward_features(images)
    finally:
        handle.remove()
    qkv = captured["qkv"]
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


@pytest.fixture
def capture_relations(monkeypatch):
    """Record the (teacher q, k, v, student q, k, v) the method passes to relation_losses."""
    calls = []

    def spy(*tensors):
        calls.append([t.detach().clone() for t in tensors])
        return relation_losses(*tensors)

    monkeypatch.setattr("mimkit.methods.distill.model.relation_losses", spy)
    return calls


# ------------------------------------------------------------------------------------------ relation losses
def reference_relation_kl(a_t, b_t, a_s, b_s) -> float:
    """KL(softmax(a_t[i] . b_t^T / sqrt(d_t)) || softmax(a_s[i] . b_s^T / sqrt(d_s))), averaged over batch,
    heads and queries, one query at a time in float64."""
    batch, heads, tokens, d_t = a_t.shape
    d_s = a_s.shape[-1]
    total, count = 0.0, 0
    for b in range(batch):
        for h in range(heads):
            for i in range(tokens):
                p = torch.softmax(a_t[b, h, i].double() @ b_t[b, h].double().T / math.sqrt(d_t), dim=0)
                s = torch.softmax(a_s[b, h, i].double() @ b_s[b, h].double().T / math.sqrt(d_s), dim=0)
                total += float((p * torch.log(p / s)).sum())
                count += 1
    return total / count


def random_qkv(batch, heads, tokens, dim, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, dim, generator=gen) * scale for _ in range(3)]


def test_relation_losses_match_a_written_out_kl_with_different_head_dims():
    teacher = random_qkv(2, 3, 5, 8, seed=1, scale=1.5)
    student = random_qkv(2, 3, 5, 4, seed=2, scale=1.5)
    losses = relation_losses(*teacher, *student)
    q_t, k_t, v_t = teacher
    q_s, k_s, v_s = student
    assert set(losses) == {"qk", "vv"}
    assert losses["qk"].item() == pytest.approx(reference_relation_kl(q_t, k_t, q_s, k_s), rel=1e-5)
    assert losses["vv"].item() == pytest.approx(reference_relation_kl(v_t, v_t, v_s, v_s), rel=1e-5)
    assert losses["qk"].item() > 0.01 and losses["vv"].item() > 0.01  # not trivially zero


def test_relation_losses_are_zero_when_the_student_equals_the_teacher():
    teacher = random_qkv(2, 3, 7, 8, seed=3)
    losses = relation_losses(*teacher, *[t.clone() for t in teacher])
    assert losses["qk"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["vv"].item() == pytest.approx(0.0, abs=1e-6)


def test_relation_losses_send_gradients_to_the_student_only():
    teacher = [t.requires_grad_() for t in random_qkv(2, 3, 5, 8, seed=4)]
    student = [t.requires_grad_() for t in random_qkv(2, 3, 5, 4, seed=5)]
    losses = relation_losses(*teacher, *student)
    (losses["qk"] + losses["vv"]).backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)


def test_relation_losses_reject_different_head_counts():
    with pytest.raises(ValueError, match="head and token counts must match"):
        relation_losses(*random_qkv(2, 3, 5, 8, seed=6), *random_qkv(2, 4, 5, 8, seed=7))


def test_relation_losses_stay_finite_for_extreme_logits():
    teacher = random_qkv(2, 3, 6, 8, seed=8, scale=100.0)  # logits ~1e4: softmax underflows to exact zeros
    student = random_qkv(2, 3, 6, 4, seed=9, scale=100.0)
    assert (torch.softmax(teacher[0] @ teacher[1].transpose(-2, -1), -1) == 0).any()  # the pitfall is real here
    losses = relation_losses(*teacher, *student)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    same = relation_losses(*teacher, *[t.clone() for t in teacher])
    assert all(v.item() == pytest.approx(0.0, abs=1e-6) for v in same.values())


def test_relation_losses_are_float32_under_autocast():
    teacher = random_qkv(2, 3, 17, 32, seed=10, scale=2.0)
    gen = torch.Generator().manual_seed(11)
    student = [t + 0.05 * torch.randn(t.shape, generator=gen) for t in teacher]
    plain = relation_losses(*teacher, *student)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = relation_losses(*teacher, *student)
    for key in ("qk", "vv"):
        assert mixed[key].dtype == torch.float32
        assert mixed[key].item() == pytest.approx(plain[key].item(), rel=1e-4)


def test_split_heads_is_the_standard_head_split():
    x = torch.arange(2 * 3 * 12, dtype=torch.float32).reshape(2, 3, 12)
    heads = split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 3)
    assert torch.equal(heads[1, 2, 0], x[1, 0, 6:9])
    with pytest.raises(ValueError, match="width 12 cannot be split into 5 heads"):
        split_heads(x, 5)


def test_targets_parse_weights_and_reject_unknown_names():
    assert parse_targets("qk+vv") == {"qk": 1.0, "vv": 1.0}
    assert parse_targets("qk:1+vv:0.5+cls:2") == {"qk": 1.0, "vv": 0.5, "cls": 2.0}
    for bad, words in [
        ("qk+attn", "unknown target 'attn'"),
        ("qk:0", "must be > 0"),
        ("qk+qk", "listed twice"),
        ("", "empty"),
        ("qk:x", "not a number"),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse_targets(bad)


def test_target_weights_scale_the_total_loss(teacher_encoder):
    batch = make_batch()
    losses = {}
    for targets in ("qk+vv", "qk:2+vv:0.5"):
        torch.manual_seed(0)
        method = with_teacher(build_method(distill_config(f"distill.targets={targets}")), teacher_encoder).eval()
        losses[targets] = method(batch)
    a, b = losses["qk+vv"], losses["qk:2+vv:0.5"]
    assert torch.allclose(a["qk_loss"], b["qk_loss"]) and torch.allclose(a["vv_loss"], b["vv_loss"])
    assert a["loss"].item() == pytest.approx((a["qk_loss"] + a["vv_loss"]).item(), rel=1e-6)
    assert b["loss"].item() == pytest.approx((2 * b["qk_loss"] + 0.5 * b["vv_loss"]).item(), rel=1e-6)


# --------------------------------------------------------------------------------------------- the method
@pytest.mark.parametrize("targets", ["qk+vv", "cls+feature"])
def test_a_student_that_copies_the_teacher_has_zero_loss(targets, teacher_encoder):
    cfg = distill_config(
        "model.name=mim_vit_pico",
        f"distill.targets={targets}",
        "distill.color_jitter=0",
        "distill.cls_loss=mse",
        "distill.feature_loss=mse",
    )
    method = build_method(cfg)
    batch = make_batch()
    assert isinstance(getattr(method, "proj", nn.Identity()), nn.Identity)  # same width: no projection
    method.attach_teacher(copy.deepcopy(method.encoder))
    for training in (False, True):
        out = method.train(training)(batch)
        assert out["loss"].item() == pytest.approx(0.0, abs=1e-6), (training, out)
    # the same student against another teacher is far from zero: the check above can fail
    method.attach_teacher(copy.deepcopy(teacher_encoder))
    assert method.eval()(batch)["loss"].item() > 1e-3


def test_colour_jitter_makes_the_copy_differ_in_training_only():
    cfg = distill_config("model.name=mim_vit_pico", "distill.color_jitter=0.4")
    method = build_method(cfg)
    method.attach_teacher(copy.deepcopy(method.encoder))
    batch = make_batch()
    assert method.eval()(batch)["loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert method.train()(batch)["loss"].item() > 1e-6


def test_no_gradient_reaches_the_teacher_and_it_is_not_registered(teacher_encoder):
    method = with_teacher(build_method(distill_config("distill.targets=qk+vv+cls+feature")), teacher_encoder)
    method.train()(make_batch())["loss"].backward()
    teacher = method.teacher
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert method.encoder.blocks[-1].attn.qkv.weight.grad is not None  # the student did learn
    assert not any(k.startswith("teacher") for k in method.state_dict())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in method.parameters()}
    assert all(not name.startswith("teacher") for name, _ in method.named_modules())
    assert not teacher.training  # frozen teacher stays in eval mode even while the student trains


def test_moving_the_method_moves_the_teacher(teacher_encoder):
    method = with_teacher(build_method(distill_config()), teacher_encoder)
    method.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in method.teacher.parameters())
    assert all(p.dtype == torch.float64 for p in method.encoder.parameters())
    batch = make_batch()
    out = method.eval()({"images": batch["images"].double(), "keys": batch["keys"]})
    assert torch.isfinite(out["loss"])
    method.float()
    assert all(p.dtype == torch.float32 for p in method.teacher.parameters())
    assert {p.device for p in method.teacher.parameters()} == {torch.device("cpu")}


def test_a_reloaded_method_without_teacher_says_so():
    method = build_method(distill_config())
    with pytest.raises(RuntimeError, match="no teacher attached"):
        method(make_batch())


def test_the_teachers_architecture_must_be_known():
    cfg = resolved(tiny_config("method.name=distill", "distill.teacher=unused"))
    with pytest.raises(ConfigError, match="teacher's architecture is unknown"):
        build_method(cfg)


def test_student_width_that_the_teachers_heads_cannot_split_is_a_config_error():
    # mim_vit_nano: 128 wide, 4 heads; the teacher has 3 heads and 128 / 3 is not an integer
    with pytest.raises(ConfigError) as err:
        build_method(distill_config("model.name=mim_vit_nano"))
    assert "128" in str(err.value) and "3 heads" in str(err.value)


def test_resplit_teacher_splits_the_teacher_into_the_student_heads(teacher_encoder, capture_relations):
    cfg = distill_config("model.name=mim_vit_nano", "distill.head_match=resplit_teacher")
    method = with_teacher(build_method(cfg), teacher_encoder).eval()
    assert method.teacher_heads == method.student_heads == 4
    out = method(make_batch())
    q_t, _, _, q_s, _, _ = capture_relations[0]
    assert q_t.shape == (4, 4, 17, 96 // 4) and q_s.shape == (4, 4, 17, 128 // 4)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0


def test_resplit_teacher_needs_a_teacher_width_the_student_heads_divide():
    # student 40 wide with 5 heads: the teacher's 96 cannot be split into 5 heads
    cfg = distill_config("model.embed_dim=40", "model.num_heads=5", "distill.head_match=resplit_teacher")
    with pytest.raises(ConfigError) as err:
        build_method(cfg)
    assert "96" in str(err.value) and "5 heads" in str(err.value)


def test_a_six_head_student_is_read_with_the_teachers_three_heads(teacher_encoder, capture_relations):
    """reshape_student: the student's own q, k, v projections, split into 3 heads of 32 instead of 6 of 16."""
    cfg = distill_config("model.name=mim_vit_pico", "model.num_heads=6")
    method = with_teacher(build_method(cfg), teacher_encoder).eval()
    assert method.encoder.blocks[-1].attn.num_heads == 6 and method.student_heads == 3
    batch = make_batch()
    out = method(batch)
    expected_t = qkv_from_timm_forward(method.teacher, batch["images"], 5, 3)
    expected_s = qkv_from_timm_forward(method.encoder, batch["images"], 5, 3)
    got = capture_relations[0]
    for got_tensor, want in zip(got, [*expected_t, *expected_s]):
        assert got_tensor.shape == (4, 3, 17, 32)
        torch.testing.assert_close(got_tensor, want)
    manual = relation_losses(*expected_t, *expected_s)
    assert out["loss"].item() == pytest.approx((manual["qk"] + manual["vv"]).item(), rel=1e-5)


def test_cls_and_feature_targets_project_the_student_to_the_teacher_width(teacher_encoder):
    cfg = distill_config("distill.targets=cls+feature")  # femto student 48 wide, teacher 96
    method = with_teacher(build_method(cfg), teacher_encoder).eval()
    assert isinstance(method.proj, nn.Linear)
    assert (method.proj.in_features, method.proj.out_features) == (48, 96)
    assert "proj.weight" in method.state_dict()
    batch = make_batch()
    out = method(batch)
    with torch.no_grad():  # timm's own forward_features: the last block through the final norm
        t = method.teacher.forward_features(batch["images"])
        s = method.proj(method.encoder.forward_features(batch["images"]))
    # the class token is regressed raw; the features against their whitening (non-affine LayerNorm), by default
    whitened = (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    assert out["cls_loss"].item() == pytest.approx(F.smooth_l1_loss(s[:, 0], t[:, 0]).item(), rel=1e-5)
    assert out["feature_loss"].item() == pytest.approx(F.smooth_l1_loss(s, whitened).item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((out["cls_loss"] + out["feature_loss"]).item(), rel=1e-6)
    raw = with_teacher(
        build_method(distill_config("distill.targets=feature", "distill.feature_norm=false")), teacher_encoder
    )
    raw.load_state_dict(method.state_dict(), strict=False)
    with torch.no_grad():
        s_raw = raw.eval().proj(raw.encoder.forward_features(batch["images"]))
    assert raw(batch)["feature_loss"].item() == pytest.approx(F.smooth_l1_loss(s_raw, t).item(), rel=1e-5)


@pytest.mark.parametrize("layer, index", [(2, 1), (-1, 5), (None, 5), (-6, 0)])
def test_teacher_layer_selects_the_right_block(layer, index, teacher_encoder, capture_relations):
    extra = [] if layer is None else [f"distill.teacher_layer={layer}"]
    method = with_teacher(build_method(distill_config(*extra)), teacher_encoder).eval()
    assert method.t_index == index
    batch = make_batch()
    method(batch)
    got = capture_relations[0][:3]
    want = qkv_from_timm_forward(method.teacher, batch["images"], index, 3)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    if index != 5:  # a different block gives different relations: the comparison can fail
        last = qkv_from_timm_forward(method.teacher, batch["images"], 5, 3)
        assert not torch.allclose(got[0], last[0])


def test_teacher_layer_features_come_from_that_block(teacher_encoder):
    """cls/feature targets of an inner block: that block's output tokens, without the final norm."""
    method = with_teacher(
        build_method(distill_config("distill.targets=feature", "distill.teacher_layer=3")), teacher_encoder
    ).eval()
    images = make_batch()["images"]
    captured = {}
    handle = method.teacher.blocks[2].register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    with torch.no_grad():
        method.teacher.forward_features(images)
    handle.remove()
    x = captured["x"]
    torch.testing.assert_close(method.teacher_targets(images)["feature"], F.layer_norm(x, x.shape[-1:], eps=1e-6))
    method.feature_norm = False
    torch.testing.assert_close(method.teacher_targets(images)["feature"], x)
    assert not torch.allclose(F.layer_norm(x, x.shape[-1:], eps=1e-6), x, atol=1e-2)  # an inner block: not normed


@pytest.mark.parametrize("layer, index", [(1, 0), (2, 1), (-1, 2)])
def test_student_layer_selects_the_right_block(layer, index, teacher_encoder, capture_relations):
    method = with_teacher(build_method(distill_config(f"distill.student_layer={layer}")), teacher_encoder).eval()
    assert method.s_index == index
    batch = make_batch()
    method(batch)
    got = capture_relations[0][3:]
    want = qkv_from_timm_forward(method.encoder, batch["images"], index, 3)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("layer", [7, -7])
def test_an_out_of_range_teacher_layer_names_the_layer_and_the_depth(layer):
    with pytest.raises(ConfigError) as err:
        build_method(distill_config(f"distill.teacher_layer={layer}"))
    assert f"distill.teacher_layer={layer}" in str(err.value) and "6 blocks" in str(err.value)


def test_an_out_of_range_student_layer_names_the_layer_and_the_depth():
    with pytest.raises(ConfigError) as err:
        build_method(distill_config("distill.student_layer=4"))
    assert "distill.student_layer=4" in str(err.value) and "3 blocks" in str(err.value)


def test_layer_zero_is_rejected():
    with pytest.raises(ConfigError, match=r"distill.teacher_layer.*0 is not a layer"):
        tiny_config("method.name=distill", "distill.teacher=unused", "distill.teacher_layer=0")
    with pytest.raises(ConfigError, match="distill.teacher_layer=0 is out of range for a model with 6 blocks"):
        block_index(0, 6, "distill.teacher_layer")
    assert [block_index(v, 6, "x") for v in (1, 6, -1, -6, None)] == [0, 5, 5, 0, 5]


def test_prepare_teacher_records_the_teachers_architecture(teacher):
    from mimkit.methods.distill.teacher import prepare_teacher

    cfg, source = prepare_teacher(resolved(tiny_config("method.name=distill", f"distill.teacher={teacher}")))
    dis = cfg.distill
    assert source.kind == "run"
    assert (dis.teacher_embed_dim, dis.teacher_num_heads, dis.teacher_depth) == (96, 3, 6)
    assert (dis.relation_heads, dis.teacher_relation_heads) == (3, 3)
    cfg, _ = prepare_teacher(
        resolved(
            tiny_config(
                "method.name=distill",
                f"distill.teacher={teacher}",
                "model.name=mim_vit_nano",
                "distill.head_match=resplit_teacher",
            )
        )
    )
    assert (cfg.distill.relation_heads, cfg.distill.teacher_relation_heads) == (4, 3)


def test_prepare_teacher_checks_the_teacher_layer_against_the_real_teacher(teacher):
    from mimkit.methods.distill.teacher import prepare_teacher

    with pytest.raises(ConfigError, match="distill.teacher_layer=7 is out of range for a model with 6 blocks"):
        prepare_teacher(
            resolved(tiny_config("method.name=distill", f"distill.teacher={teacher}", "distill.teacher_layer=7"))
        )


# ----------------------------------------------------------------------------------- runs (in process)
@pytest.fixture(scope="module")
def six_head_run(teacher, tmp_path_factory):
    """A distilled pico student with 6 heads (its last block learned relations with the teacher's 3 heads)."""
    from mimkit.training import pretrain

    out = tmp_path_factory.mktemp("six") / "run"
    pretrain(
        load_config(
            None,
            [
                *TINY,
                "method.name=distill",
                f"distill.teacher={teacher}",
                "model.name=mim_vit_pico",
                "model.num_heads=6",
                "train.steps=2",
                "train.eval_every=2",
                "train.ckpt_every=2",
            ],
        ),
        out,
    )
    return out


def test_a_distilled_teacher_is_read_with_the_head_count_it_was_distilled_with(six_head_run):
    from mimkit.methods.distill.teacher import prepare_teacher

    base = ["method.name=distill", f"distill.teacher={six_head_run}"]
    cfg, _ = prepare_teacher(resolved(tiny_config(*base)))
    dis = cfg.distill
    assert (dis.teacher_num_heads, dis.teacher_relation_heads, dis.relation_heads) == (6, 3, 3)
    # another block of that teacher was not distilled: it keeps its own 6 heads (femto's 48 / 6 = 8)
    cfg, _ = prepare_teacher(resolved(tiny_config(*base, "distill.teacher_layer=2")))
    assert (cfg.distill.teacher_relation_heads, cfg.distill.relation_heads) == (6, 6)


def test_the_six_head_student_exports_with_its_own_head_count(six_head_run, tmp_path):
    import timm
    from safetensors.torch import load_file

    from mimkit import load
    from mimkit.interop.export import export_encoder

    info = export_encoder(six_head_run, tmp_path / "enc.safetensors")
    assert info["timm_kwargs"]["num_heads"] == 6 and info["timm_kwargs"]["embed_dim"] == 96
    model = timm.create_model(info["timm_name"], pretrained=False, **info["timm_kwargs"])
    model.load_state_dict(load_file(str(tmp_path / "enc.safetensors")), strict=True)
    images = make_batch()["images"]
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval().forward_features(images), load(six_head_run).encoder.forward_features(images)
        )


def test_masked_student_with_mim_loss_logs_it(teacher, tmp_path):
    from mimkit.training import pretrain

    results = pretrain(
        load_config(
            None,
            [
                *TINY,
                "method.name=distill",
                f"distill.teacher={teacher}",
                "distill.mask_ratio=0.5",
                "distill.mim_weight=1",
                "train.steps=2",
                "train.eval_every=2",
                "train.ckpt_every=2",
            ],
        ),
        tmp_path / "run",
    )
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert train and all({"mim_loss", "qk_loss", "vv_loss"} <= set(r) for r in train)
    for r in train:  # mim_weight 1: the logged total is the sum of its parts
        assert r["loss"] == pytest.approx(r["qk_loss"] + r["vv_loss"] + r["mim_loss"], rel=1e-4)
    assert math.isfinite(results["final_heldout_loss"])


def test_masked_student_sees_mask_tokens(teacher_encoder, capture_relations):
    cfg = distill_config("distill.mask_ratio=0.5")
    method = with_teacher(build_method(cfg), teacher_encoder).eval()
    assert method.mask_generator is not None and "mask_token" in method.state_dict()
    batch = make_batch()
    method(batch)
    masked_student_q = capture_relations[0][3]
    unmasked = qkv_from_timm_forward(method.encoder, batch["images"], 2, 3)[0]
    assert not torch.allclose(masked_student_q, unmasked)
    # the teacher sees the whole image
    torch.testing.assert_close(capture_relations[0][0], qkv_from_timm_forward(method.teacher, batch["images"], 5, 3)[0])


# ---------------------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def cli_run(teacher, tmp_path_factory):
    """`mimkit distill` from a copy of the teacher, which is deleted afterwards: the run must not need it."""
    base = tmp_path_factory.mktemp("cli")
    teacher_copy = base / "teacher"
    shutil.copytree(teacher, teacher_copy)
    out = base / "run"
    proc = run_cli(
        "distill",
        "--teacher",
        str(teacher_copy),
        "--out",
        str(out),
        *sets([*TINY, "distill.targets=qk+vv", "train.steps=6"]),
        check=True,
    )
    shutil.rmtree(teacher_copy)
    return out, proc


def test_cli_run_records_the_teacher_in_its_config(cli_run):
    import yaml

    out, proc = cli_run
    tree = yaml.safe_load((out / "config.yaml").read_text())
    assert tree["method"]["name"] == "distill" and tree["model"]["name"] == "mim_vit_femto"
    dis = tree["distill"]
    assert dis["teacher"].endswith("teacher") and dis["targets"] == "qk+vv"
    assert (dis["teacher_embed_dim"], dis["teacher_num_heads"], dis["teacher_depth"]) == (96, 3, 6)
    assert (dis["relation_heads"], dis["teacher_relation_heads"], dis["head_match"]) == (3, 3, "reshape_student")
    assert "6 blocks x 3 heads, width 96" in proc.stdout


def test_cli_run_writes_checkpoints_metrics_and_results(cli_run):
    out, _ = cli_run
    assert (out / "checkpoints/last").exists() and (out / "checkpoints/best").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all(r["loss"] == pytest.approx(r["qk_loss"] + r["vv_loss"], rel=1e-4) for r in train)
    assert "mim_loss" not in train[0] and "cls_loss" not in train[0]
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 6 and math.isfinite(results["final_heldout_loss"]) and results["final_heldout_loss"] > 0


def test_cli_run_reloads_without_its_teacher(cli_run):
    from safetensors.torch import load_file

    from mimkit import load

    out, _ = cli_run
    method = load(out)
    assert isinstance(method, Distill) and method.teacher is None
    weights = load_file(str(out / "checkpoints/last/model.safetensors"))
    assert not any(k.startswith("teacher") for k in weights)  # checkpoints hold the student alone
    assert torch.equal(method.encoder.blocks[0].attn.qkv.weight, weights["encoder.blocks.0.attn.qkv.weight"])
    with pytest.raises(RuntimeError, match="no teacher attached"):  # training needs the teacher back
        method(make_batch())


def test_cli_export_loads_strictly_into_timm(cli_run, tmp_path, capsys):
    import timm
    from safetensors.torch import load_file

    from mimkit import load
    from mimkit.cli import main

    out, _ = cli_run
    target = tmp_path / "student.safetensors"
    assert main(["export", str(out), "--out", str(target)]) == 0
    assert "timm.create_model('vit_tiny_patch16_224'" in capsys.readouterr().out
    info = json.loads((tmp_path / "student.safetensors.json").read_text())
    kw = info["timm_kwargs"]
    assert (kw["embed_dim"], kw["depth"], kw["num_heads"], kw["img_size"], kw["in_chans"]) == (48, 3, 3, 16, 1)
    model = timm.create_model(info["timm_name"], pretrained=False, **kw)
    model.load_state_dict(load_file(str(target)), strict=True)
    images = make_batch()["images"]
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(images), load(out).encoder.forward_features(images))


def test_a_run_resumes_with_the_same_teacher_file_from_another_checkout(teacher, tmp_path, capsys):
    """The teacher is compared by content: a copy of the same exported encoder elsewhere (a new clone, a worktree)
    resumes the run, also once the first copy is gone (teacher.json recorded its digest); a teacher file changed in
    place, or a different file, is refused, naming the teacher, and the run's config is kept."""
    from safetensors.torch import load_file, save_file

    from mimkit.cli import main

    first, second = tmp_path / "a/teacher.safetensors", tmp_path / "b/teacher.safetensors"
    first.parent.mkdir()
    assert main(["export", str(teacher), "--out", str(first)]) == 0
    shutil.copytree(first.parent, second.parent)
    out = tmp_path / "run"
    words = [*TINY, "distill.targets=qk+vv", "train.eval_every=2", "train.ckpt_every=2"]
    assert main(["distill", "--teacher", str(first), "--out", str(out), *sets([*words, "train.steps=2"])]) == 0
    assert json.loads((out / "teacher.json").read_text())["identity"].startswith("sha256:")
    shutil.rmtree(first.parent)  # the first checkout is gone
    assert main(["distill", "--teacher", str(second), "--out", str(out), *sets([*words, "train.steps=4"])]) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    before = (out / "config.yaml").read_text()

    tensors = load_file(str(second))
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in tensors.items()}
    other = tmp_path / "c/teacher.safetensors"
    other.parent.mkdir()
    save_file(changed, str(other))
    shutil.copy(second.with_name("teacher.safetensors.json"), other.with_name("teacher.safetensors.json"))
    err = cli_error(capsys, "distill", "--teacher", str(other), "--out", str(out), *sets([*words, "train.steps=6"]))
    assert "different distill config (distill.teacher:" in err and str(other) in err
    save_file(changed, str(second))  # the same path, other weights
    err = cli_error(capsys, "distill", "--teacher", str(second), "--out", str(out), *sets([*words, "train.steps=6"]))
    assert "whose content has changed since the run started" in err
    assert (out / "config.yaml").read_text() == before


def test_same_source_matches_content_and_directories_not_names(tmp_path):
    from mimkit.weights.identity import same_source, source_identity

    (tmp_path / "a").write_bytes(b"weights")
    (tmp_path / "b").write_bytes(b"weights")
    (tmp_path / "c").write_bytes(b"other!!")
    (tmp_path / "run").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run")
    (tmp_path / "run2").mkdir()
    assert same_source(str(tmp_path / "a"), str(tmp_path / "b"))
    assert not same_source(str(tmp_path / "a"), str(tmp_path / "c"))
    assert same_source(str(tmp_path / "run"), str(tmp_path / "link"))
    assert not same_source(str(tmp_path / "run"), str(tmp_path / "run2"))  # two runs: never compared by content
    assert not same_source(str(tmp_path / "gone"), str(tmp_path / "gone2")) and same_source(None, None)
    digest = source_identity(str(tmp_path / "a"))
    assert same_source(str(tmp_path / "gone"), str(tmp_path / "b"), recorded=digest)  # judged by what it was
    assert not same_source(str(tmp_path / "a"), str(tmp_path / "a"), recorded="sha256:0000")  # changed in place
    # a random init in a file's architecture is keyed by the file too (a comparison's random baseline), a run's not
    assert source_identity(f"scratch:{tmp_path / 'a'}") == "scratch:" + digest
    assert source_identity(f"scratch:{tmp_path / 'a'}") == source_identity(f"scratch:{tmp_path / 'b'}")
    assert source_identity(f"scratch:{tmp_path / 'run'}") == f"scratch:{tmp_path / 'run'}"


def test_cli_finetune_starts_from_the_distilled_student(cli_run, tmp_path, capsys):
    from mimkit.cli import main

    out, _ = cli_run
    ft = [
        "device=cpu",
        "data.name=synthetic",
        "data.synthetic_size=128",
        "data.img_size=16",
        "data.in_chans=1",
        "train.epochs=null",
        "train.steps=2",
        "train.eval_every=2",
        "train.ckpt_every=2",
        "train.tensorboard=false",
        "train.batch_size=16",
        "train.eval_samples=32",
        "train.eval_batch_size=16",
    ]
    assert main(["finetune", "--init", str(out), "--out", str(tmp_path / "ft"), *sets(ft)]) == 0
    assert "fresh: fc_norm.weight, fc_norm.bias, head.weight, head.bias" in capsys.readouterr().out
    results = json.loads((tmp_path / "ft/results.json").read_text())
    assert results["init"].startswith("distill run") and results["step"] == 2


# ------------------------------------------------------------------------------------------------ chains
def chain_args(teacher, out):
    return [
        "distill",
        "--teacher",
        str(teacher),
        "--chain",
        "mim_vit_femto,mim_vit_femto",
        "--out",
        str(out),
        *sets([*TINY, "train.steps=2", "train.eval_every=2", "train.ckpt_every=2"]),
    ]


@pytest.fixture(scope="module")
def chain(teacher, tmp_path_factory):
    from mimkit.cli import main

    out = tmp_path_factory.mktemp("chain") / "chain"
    assert main(chain_args(teacher, out)) == 0
    return out


def read_chain(out):
    return json.loads((out / "chain.json").read_text())


def test_chain_trains_each_stage_from_the_previous_one(chain, teacher):
    import yaml

    s1, s2 = chain / "stage1-mim_vit_femto", chain / "stage2-mim_vit_femto"
    assert (s1 / "results.json").is_file() and (s2 / "results.json").is_file()
    record = read_chain(chain)
    assert record["planned"] == ["mim_vit_femto", "mim_vit_femto"]
    stages = record["stages"]
    assert [s["stage"] for s in stages] == [1, 2] and [s["status"] for s in stages] == ["trained", "trained"]
    assert stages[0]["teacher"] == str(teacher) and stages[1]["teacher"] == str(s1)
    assert [s["run_dir"] for s in stages] == [str(s1), str(s2)]
    assert stages[1]["final_heldout_loss"] == json.loads((s2 / "results.json").read_text())["final_heldout_loss"]
    dis = yaml.safe_load((s2 / "config.yaml").read_text())["distill"]
    assert dis["teacher"] == str(s1) and (dis["teacher_embed_dim"], dis["teacher_depth"]) == (48, 3)


def test_rerunning_a_finished_chain_skips_every_stage(chain, teacher, capsys):
    from mimkit.cli import main

    stamps = {p: p.stat().st_mtime_ns for p in chain.glob("stage*/results.json")}
    capsys.readouterr()
    assert main(chain_args(teacher, chain)) == 0
    out = capsys.readouterr().out  # a line per stage, not the JSON
    assert "{" not in out and out.count("(skipped (finished before)") == 2 and str(chain / "chain.json") in out
    assert [s["status"].split()[0] for s in read_chain(chain)["stages"]] == ["skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in chain.glob("stage*/results.json")} == stamps


@pytest.mark.parametrize("damage", ["results_deleted", "stage_removed"])
def test_rerunning_a_chain_redoes_only_the_unfinished_stage(damage, chain, teacher):
    from mimkit.cli import main

    s1, s2 = chain / "stage1-mim_vit_femto", chain / "stage2-mim_vit_femto"
    stamp = (s1 / "results.json").stat().st_mtime_ns
    if damage == "results_deleted":
        (s2 / "results.json").unlink()
        assert (s2 / "checkpoints").is_dir()
    else:
        shutil.rmtree(s2)
    assert main(chain_args(teacher, chain)) == 0
    assert [s["status"].split()[0] for s in read_chain(chain)["stages"]] == ["skipped", "trained"]
    assert (s2 / "results.json").is_file() and json.loads((s2 / "results.json").read_text())["step"] == 2
    assert (s1 / "results.json").stat().st_mtime_ns == stamp


# ------------------------------------------------------------------------------------------- bad input
def test_unknown_target_exits_2_without_traceback(capsys, tmp_path):
    err = cli_error(
        capsys,
        "distill",
        "--teacher",
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
        *sets([*TINY, "distill.targets=qk+attn"]),
    )
    assert "unknown target 'attn'" in err
    assert not (tmp_path / "out").exists()


def test_missing_teacher_exits_2_naming_the_path(capsys, tmp_path):
    missing = tmp_path / "no-such-teacher"
    err = cli_error(capsys, "distill", "--teacher", str(missing), "--out", str(tmp_path / "out"), *sets(TINY))
    assert str(missing) in err


def test_teacher_with_another_image_size_exits_2_naming_both(capsys, teacher, tmp_path):
    err = cli_error(
        capsys, "distill", "--teacher", str(teacher), "--out", str(tmp_path / "out"), *sets([*TINY, "data.img_size=32"])
    )
    assert "16 px" in err and "32 px" in err


def test_student_width_not_splittable_into_teacher_heads_exits_2(capsys, teacher, tmp_path):
    err = cli_error(
        capsys,
        "distill",
        "--teacher",
        str(teacher),
        "--student",
        "mim_vit_nano",
        "--out",
        str(tmp_path / "out"),
        *sets(NO_MODEL),
    )
    assert "128" in err and "3 heads" in err


def test_a_rejected_student_leaves_no_run_directory(capsys, teacher, tmp_path):
    cli_error(
        capsys,
        "distill",
        "--teacher",
        str(teacher),
        "--student",
        "mim_vit_nano",
        "--out",
        str(tmp_path / "out"),
        *sets(NO_MODEL),
    )
    assert not (tmp_path / "out").exists()


def test_missing_teacher_message_names_the_teacher_option(capsys, tmp_path):
    err = cli_error(capsys, "distill", "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "out"), *sets(TINY))
    assert "teacher" in err and "init:" not in err


def test_mim_weight_without_mask_ratio_exits_2(capsys, teacher, tmp_path):
    err = cli_error(
        capsys,
        "distill",
        "--teacher",
        str(teacher),
        "--out",
        str(tmp_path / "out"),
        *sets([*TINY, "distill.mim_weight=1"]),
    )
    assert "distill.mask_ratio" in err


def test_chain_without_students_exits_2(capsys, teacher, tmp_path):
    err = cli_error(
        capsys, "distill", "--teacher", str(teacher), "--chain", ",", "--out", str(tmp_path / "c"), *sets(TINY)
    )
    assert "at least one student" in err


# ------------------------------------------------------------------------------------------- colour jitter
MEAN, STD = [0.5], [0.25]


def jitter_images(n=6, chans=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, chans, 8, 8, generator=gen)
    return (pixels - MEAN[0]) / STD[0]


def test_color_jitter_is_keyed_by_sample():
    x, keys = jitter_images(), torch.arange(6)
    a = color_jitter(x, keys, 0.4, MEAN, STD, seed=0)
    assert torch.equal(a, color_jitter(x, keys, 0.4, MEAN, STD, seed=0))  # same call, same process: bit-exact
    # per sample, not per batch; a tolerance, since a per-image mean over a smaller batch may be split over threads
    # differently, which moves its rounding
    torch.testing.assert_close(a[2:4], color_jitter(x[2:4], keys[2:4], 0.4, MEAN, STD, seed=0), rtol=1e-6, atol=1e-6)
    b = color_jitter(x, keys + 1000, 0.4, MEAN, STD, seed=0)
    c = color_jitter(x, keys, 0.4, MEAN, STD, seed=1)
    for other in (b, c):
        assert all(not torch.allclose(a[i], other[i]) for i in range(6))


def test_color_jitter_of_strength_zero_is_the_identity():
    x = jitter_images()
    assert torch.equal(color_jitter(x, torch.arange(6), 0.0, MEAN, STD, seed=0), x)


def test_color_jitter_keeps_pixels_in_range_shape_and_dtype():
    x = jitter_images() * 3  # also pixels outside [0, 1] before jitter
    out = color_jitter(x, torch.arange(6), 0.9, MEAN, STD, seed=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    pixels = out * STD[0] + MEAN[0]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    half = color_jitter(jitter_images().to(torch.bfloat16), torch.arange(6), 0.4, MEAN, STD, seed=0)
    assert half.dtype == torch.bfloat16


def expected_jitter(pixels, keys, strength, seed):
    """torchvision's brightness, contrast, saturation blends in that order, written out from the keyed factors."""
    f = 1 - strength + 2 * strength * keyed_uniform(keys, 3, seed, STREAM_JITTER)
    factor = [f[:, j].view(-1, 1, 1, 1) for j in range(3)]

    def gray(img):
        return img if img.shape[1] == 1 else 0.299 * img[:, :1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:]

    img = (pixels * factor[0]).clamp(0, 1)
    level = gray(img).mean(dim=(1, 2, 3), keepdim=True)
    img = (level + factor[1] * (img - level)).clamp(0, 1)
    return (gray(img) + factor[2] * (img - gray(img))).clamp(0, 1)


@pytest.mark.parametrize("chans", [1, 3])
def test_color_jitter_is_brightness_contrast_saturation(chans):
    x, keys = jitter_images(chans=chans), torch.arange(6)
    mean, std = MEAN * chans, STD * chans
    out = color_jitter(x, keys, 0.4, mean, std, seed=3) * STD[0] + MEAN[0]
    torch.testing.assert_close(out, expected_jitter(x * STD[0] + MEAN[0], keys, 0.4, 3), atol=1e-5, rtol=0)


def test_color_jitter_leaves_gray_rgb_images_gray():
    """Three equal channels: saturation has nothing to change, so each channel equals the 1-channel result."""
    gray = jitter_images()
    out = color_jitter(gray.repeat(1, 3, 1, 1), torch.arange(6), 0.4, MEAN * 3, STD * 3, seed=3)
    one = color_jitter(gray, torch.arange(6), 0.4, MEAN, STD, seed=3)
    for c in range(3):
        torch.testing.assert_close(out[:, c : c + 1], one, atol=1e-5, rtol=0)


def test_a_config_listing_stages_runs_a_chain(teacher, tmp_path):
    """`distill.chain` in a recipe (here as an override) does what --chain does."""
    from mimkit.cli import main

    out = tmp_path / "from-config"
    args = [
        "distill",
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        *sets([*TINY, "train.steps=2", "train.eval_every=2", "train.ckpt_every=2", "distill.chain=[mim_vit_femto]"]),
    ]
    assert main(args) == 0
    assert [s["student"] for s in read_chain(out)["stages"]] == ["mim_vit_femto"]
    assert (out / "stage1-mim_vit_femto" / "results.json").is_file()


def test_distillation_without_a_teacher_is_a_user_error(capsys, tmp_path):
    err = cli_error(capsys, "distill", "--out", str(tmp_path / "out"), *sets(TINY))
    assert "needs a teacher" in err and not (tmp_path / "out").exists()


def test_a_mask_ratio_that_masks_everything_is_a_config_error(capsys, teacher, tmp_path):
    err = cli_error(
        capsys,
        "distill",
        "--teacher",
        str(teacher),
        "--out",
        str(tmp_path / "out"),
        *sets([*TINY, "distill.mask_ratio=0.99"]),
    )
    assert "distill.mask_ratio" in err


def test_a_finished_stage_trained_otherwise_is_not_reused(capsys, chain, teacher, tmp_path):
    """Re-running a chain into the same directory with other settings must not silently reuse old stages."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(chain, out)
    err = cli_error(capsys, *chain_args(teacher, out), "--set", "distill.targets=qk")
    assert "trained with other settings" in err and "distill.targets" in err


def test_resuming_a_chain_that_never_started_is_a_user_error(capsys, teacher, tmp_path):
    err = cli_error(capsys, *chain_args(teacher, tmp_path / "none"), "--resume")
    assert "no chain.json" in err
