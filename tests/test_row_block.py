"""The last block only where the loss reads it (masked tokens, the class token): the same outputs, loss and gradients
as the full computation."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Block

from conftest import tiny_config
from mimkit.config import resolved
from mimkit.fast.rows import (
    block_at_rows,
    class_token_forward,
    gather_rows,
    last_block_at_rows,
    masked_rows,
    reads_class_token_only,
    runs_on_rows,
)
from mimkit.methods import build_method


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def _assert_grads_close(grads: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Equal up to float rounding, measured against each gradient's largest entry (BatchNorm over a few samples, as
    in MoCo v3's heads, amplifies rounding in the small entries)."""
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        scale = expected[name].abs().max().item()
        assert (grad - expected[name]).abs().max().item() <= 1e-4 * scale + 1e-5, name


@pytest.mark.parametrize("options", [dict(qkv_bias=True), dict(qkv_bias=False, qk_norm=True, init_values=0.1)])
@pytest.mark.parametrize("fused", [True, False])
def test_block_at_rows_is_the_full_block_gathered(options, fused):
    torch.manual_seed(0)
    block = Block(24, 3, **options).train()
    block.attn.fused_attn = fused
    x = torch.randn(3, 9, 24, requires_grad=True)
    rows = torch.tensor([[0, 4, 8], [1, 2, 3], [8, 5, 6]])
    weight = torch.randn(3, 3, 24)  # a loss that weighs every output differently

    (gather_rows(block(x), rows) * weight).sum().backward()
    full_x, full = x.grad.clone(), _grads(block)
    x.grad = None
    block.zero_grad()
    out = block_at_rows(block, x, rows)
    (out * weight).sum().backward()

    torch.testing.assert_close(out, gather_rows(block(x), rows))
    torch.testing.assert_close(x.grad, full_x)
    assert full.keys() == _grads(block).keys()
    for name, grad in _grads(block).items():
        torch.testing.assert_close(grad, full[name], msg=name)


@pytest.mark.parametrize("contiguous", [True, False])
def test_gather_rows_is_torch_gather(contiguous):
    torch.manual_seed(0)
    x = torch.randn(3, 9, 5, requires_grad=True)
    source = x if contiguous else x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert source.is_contiguous() == contiguous
    rows = torch.tensor([[0, 4, 8, 1], [8, 7, 2, 3], [5, 5, 6, 0]])  # a repeated index sums its gradients
    weight = torch.randn(3, 4, 5)
    expected = torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, 5))
    (expected * weight).sum().backward()
    expected_grad = x.grad.clone()
    x.grad = None
    out = gather_rows(source, rows)
    (out * weight).sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, expected_grad)


def test_masked_rows_lists_the_masked_tokens_in_order_without_counting_them():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    assert masked_rows(mask, 2).tolist() == [[0, 2], [2, 3]]
    assert masked_rows(mask, 2, offset=1).tolist() == [[1, 3], [3, 4]]
    half = (torch.arange(300) < 150).expand(8, -1)  # long rows, shuffled per row: ascending as well
    shuffled = half.gather(1, torch.argsort(torch.rand(8, 300), dim=1))
    assert torch.equal(masked_rows(shuffled, 150), torch.stack([row.nonzero().flatten() for row in shuffled]))


def test_a_hooked_or_foreign_last_block_runs_whole_and_is_then_gathered():
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([Block(16, 2), Block(16, 2)])
    x, rows = torch.randn(2, 5, 16), torch.tensor([[1, 3], [0, 4]])
    expected = gather_rows(blocks[1](blocks[0](x)), rows)
    assert runs_on_rows(blocks[1])
    seen = []
    handle = blocks[1].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert not runs_on_rows(blocks[1])
    torch.testing.assert_close(last_block_at_rows(blocks, x, rows, grad_checkpointing=False), expected)
    assert seen == [(2, 5, 16)]  # the hook saw the whole block run
    handle.remove()
    handle = blocks[1].attn.qkv.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    torch.testing.assert_close(last_block_at_rows(blocks, x, rows, grad_checkpointing=False), expected)
    assert seen[-1] == (2, 5, 16)  # a hook inside the block counts too
    handle.remove()
    assert runs_on_rows(blocks[1])
    torch.testing.assert_close(last_block_at_rows(blocks, x, rows, grad_checkpointing=True), expected)
    assert not runs_on_rows(torch.nn.Identity())
    torch.testing.assert_close(last_block_at_rows([], x, rows, grad_checkpointing=False), gather_rows(x, rows))


def _loss_and_grads(method, batch, rows_only: bool, runner=None) -> tuple[float, dict[str, torch.Tensor]]:
    method.fast_path = rows_only
    method.zero_grad()
    torch.manual_seed(1)  # drop path draws the same numbers in both computations
    loss = (method if runner is None else runner)(batch)["loss"]
    loss.backward()
    return loss.item(), _grads(method)


def _last_block(method) -> torch.nn.Module:
    return method.decoder_blocks[-1] if hasattr(method, "decoder_blocks") else method.encoder.blocks[-1]


def _step_flops(method, batch) -> int:
    from mimkit.bench.flops import count_flops

    flops = count_flops(lambda: method(batch)["loss"].backward())
    method.zero_grad()
    return flops


def _assert_same(method, batch, runner=None) -> None:
    method.fast_path = True
    partial_flops = _step_flops(method, batch)
    method.fast_path = False
    assert partial_flops < _step_flops(method, batch)  # the switch really changes the computation
    full_loss, full = _loss_and_grads(method, batch, rows_only=False, runner=runner)
    loss, grads = _loss_and_grads(method, batch, rows_only=True, runner=runner)
    assert loss == pytest.approx(full_loss, rel=1e-5)
    assert grads.keys() == full.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "extra",
    [
        ("method.name=mae",),
        ("method.name=mae", "method.norm_pix=false", "train.grad_checkpointing=true", "model.drop_path=0.3"),
        ("method.name=simmim", "method.mask_patch_size=8", "model.drop_path=0.3"),
        ("method.name=simmim", "method.mask_patch_size=8", "data.in_chans=3", "train.grad_checkpointing=true"),
    ],
)
def test_training_loss_and_gradients_equal_the_full_forward(extra):
    torch.manual_seed(0)
    method = build_method(resolved(tiny_config(*extra))).train()
    assert runs_on_rows(_last_block(method))  # the partial block runs, not its whole-block fallback
    batch = {"images": torch.randn(4, method.chans, 16, 16), "keys": torch.arange(4)}
    _assert_same(method, batch)
    _assert_same(method.eval(), batch)  # held-out losses


@pytest.mark.parametrize("name", ["mae", "simmim"])
def test_compiled_checkpointed_training_loss_equals_the_full_forward(name):
    """Graph capture (aot_eager: dynamo and AOT autograd, no code generation) through the partial last block,
    checkpointed."""
    torch.manual_seed(0)
    method = build_method(
        resolved(tiny_config(f"method.name={name}", "method.mask_patch_size=8", "train.grad_checkpointing=true"))
    ).train()
    batch = {"images": torch.randn(4, method.chans, 16, 16), "keys": torch.arange(4)}
    _assert_same(method, batch, runner=torch.compile(method, backend="aot_eager"))


def test_a_hook_on_the_head_or_a_replaced_projection_turns_the_partial_run_off():
    torch.manual_seed(0)
    method = build_method(resolved(tiny_config("method.name=mae"))).train()
    batch = {"images": torch.randn(2, 1, 16, 16), "keys": torch.arange(2)}
    seen = []
    handle = method.decoder_pred.register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    method(batch)
    assert seen == [17]  # the class token and every patch, as without the partial run
    handle.remove()

    class LoRALinear(torch.nn.Linear):  # a projection whose forward does more than its weight says
        pass

    block = _last_block(method)
    assert runs_on_rows(block)
    qkv = block.attn.qkv
    block.attn.qkv = LoRALinear(qkv.in_features, qkv.out_features)
    assert not runs_on_rows(block)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mae", "simmim"])
def test_training_loss_equals_the_full_forward_on_cuda_in_bf16(name):
    torch.manual_seed(0)
    method = build_method(resolved(tiny_config(f"method.name={name}", "method.mask_patch_size=8"))).cuda().train()
    batch = {"images": torch.randn(8, method.chans, 16, 16, device="cuda"), "keys": torch.arange(8, device="cuda")}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        full_loss, full = _loss_and_grads(method, batch, rows_only=False)
        loss, grads = _loss_and_grads(method, batch, rows_only=True)
    assert loss == pytest.approx(full_loss, rel=2e-2)
    for key, grad in grads.items():
        torch.testing.assert_close(grad, full[key], rtol=5e-2, atol=5e-3, msg=key)


@pytest.mark.parametrize(
    "options",
    [
        dict(drop_path_rate=0.3),
        dict(
            reg_tokens=4,
            no_embed_class=True,
            pre_norm=True,
            patch_drop_rate=0.3,
            pos_drop_rate=0.1,
            dynamic_img_size=True,
            fc_norm=True,
            init_values=0.1,
            qk_norm=True,
        ),
    ],
)
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_class_token_forward_is_the_whole_model_for_a_token_pooled_vit(options, checkpointing, train):
    import timm

    from mimkit.bench.flops import count_flops

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=5, global_pool="token", **options
    ).train(train)
    vit.set_grad_checkpointing(checkpointing)
    assert reads_class_token_only(vit) and runs_on_rows(vit.blocks[-1])
    x = torch.randn(3, 3, 32, 32)
    outputs, grads, flops = [], [], []
    for run in (vit, lambda images: class_token_forward(vit, images)):
        vit.zero_grad()
        torch.manual_seed(1)  # drop path, patch and position dropout draw the same numbers in both
        out = run(x)
        out.pow(2).sum().backward()
        outputs.append(out.detach())
        grads.append(_grads(vit))
        flops.append(count_flops(lambda: run(x).sum()))
    torch.testing.assert_close(outputs[1], outputs[0])
    _assert_grads_close(grads[1], grads[0])
    assert flops[1] < 0.9 * flops[0]  # the last block really ran at one token


def test_hooks_pooling_and_dropout_that_need_the_whole_model():
    import timm

    def vit(**options):
        return timm.create_model(
            "vit_tiny_patch16_224",
            img_size=32,
            patch_size=8,
            depth=2,
            num_classes=5,
            **{"global_pool": "token", **options},
        )

    for part in ("", "norm", "fc_norm", "head_drop", "head", "blocks"):
        model = vit()
        assert reads_class_token_only(model)
        (model.get_submodule(part) if part else model).register_forward_hook(lambda *_: None)
        assert not reads_class_token_only(model), part
    assert not reads_class_token_only(vit(global_pool="avg"))
    dropout = vit(proj_drop_rate=0.1)  # dropout inside the blocks: the last one runs whole, then is gathered
    assert reads_class_token_only(dropout) and not runs_on_rows(dropout.blocks[-1])
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    expected = dropout(x)
    torch.manual_seed(1)
    torch.testing.assert_close(class_token_forward(dropout, x), expected)


@pytest.mark.parametrize(
    "extra",
    [
        ("method.name=supervised", "model.global_pool=token", "model.num_classes=4"),
        ("method.name=mocov3", "method.moco_dim=16", "method.moco_mlp_dim=32"),
        ("method.name=task", "data.task=localization", "model.global_pool=token"),
    ],
)
def test_class_token_methods_train_as_with_the_whole_encoder(extra):
    torch.manual_seed(0)
    method = build_method(resolved(tiny_config(*extra))).train()
    for encoder in (method.encoder, getattr(method, "momentum_encoder", method.encoder)):
        assert reads_class_token_only(encoder) and runs_on_rows(encoder.blocks[-1])
    x = torch.randn(4, 1, 16, 16)
    batch = {
        "images": x,
        "images2": x.flip(-1),
        "labels": torch.arange(4) % 4,
        "keys": torch.arange(4),
        "targets": torch.rand(4, 4),
    }
    results = []
    for rows_only in (True, False):
        method.fast_path = rows_only
        method.zero_grad()
        torch.manual_seed(1)
        loss = method(batch)["loss"]
        loss.backward()
        results.append((loss.item(), _grads(method), _step_flops(method, batch)))
    (loss, grads, flops), (full_loss, full, full_flops) = results
    assert loss == pytest.approx(full_loss, rel=1e-5)
    _assert_grads_close(grads, full)
    assert flops < 0.95 * full_flops  # the switch really changes the computation
