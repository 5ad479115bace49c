"""SimMIM on SwinV2: mask token after the patch embedding, head at the final stride, presets, recipes, fine-tuning
and export of a Swin run."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from conftest import TINY, run_cli, sets
from mimkit.config import ConfigError, load_config, resolved
from mimkit.data.keyed_random import sample_keys
from mimkit.methods import build_method
from mimkit.methods.supervised import layer_decay_groups
from mimkit.models.swin import final_stride, swin_layer_id

SWIN_TINY = [*TINY, "model.name=mim_swinv2_femto", "method.name=simmim", "method.mask_patch_size=4"]


def swin_method(*extra: str):
    torch.manual_seed(0)
    return build_method(resolved(load_config(None, [*SWIN_TINY, *extra])))


def count_params(cfg_overrides: list[str]) -> int:
    with torch.device("meta"):
        method = build_method(resolved(load_config(None, cfg_overrides)))
    return sum(p.numel() for p in method.encoder.parameters())


@pytest.mark.parametrize(
    "recipe, paper_params",
    [
        ("simmim_swinv2_small_in1k", 49e6),
        ("simmim_swinv2_base_in1k", 87e6),
        ("simmim_swinv2_large_in1k", 195e6),
        ("simmim_swinv2_huge_in1k", 655e6),
        ("simmim_swinv2_giant_in1k", 1.06e9),
    ],
)
def test_paper_sizes_match_the_papers_parameter_counts(recipe, paper_params):
    cfg = load_config(recipe)
    n = count_params(
        [
            f"model.name={cfg.model.name}",
            *([f"model.window_size={cfg.model.window_size}"] if cfg.model.window_size else []),
            "data.img_size=192",
            "method.name=simmim",
        ]
    )
    assert abs(n - paper_params) / paper_params < 0.02, n
    r = resolved(cfg)
    assert (r.data.img_size, r.model.window_size, r.method.mask_patch_size) == (192, 12, 32)
    assert r.model.stage_depths == [2, 2, 18, 2]


def test_mask_token_replaces_masked_patch_embeddings_before_the_first_stage():
    method = swin_method()
    images = torch.randn(4, 1, 16, 16)
    mask = method.mask_generator(sample_keys(torch.arange(4), 0), 0)
    seen = {}
    handle = method.encoder.layers[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    method.forward_mim(images, mask)
    handle.remove()
    x = seen["x"]  # (B, h, w, C): the first stage's input
    embedded = method.encoder.patch_embed(images)
    flat_mask = mask.reshape(x.shape[:3]).bool()
    assert flat_mask.any() and (~flat_mask).any()
    token = method.mask_token.reshape(-1)
    assert torch.allclose(x[flat_mask], token.expand(int(flat_mask.sum()), -1))
    assert torch.allclose(x[~flat_mask], embedded[~flat_mask])


def test_head_sits_at_the_final_stride_and_predicts_the_whole_image():
    method = swin_method()
    stride = final_stride(method.encoder)
    assert stride == 4 * 2**2  # patch 4, three stages: two downsamplings
    conv = method.decoder[0]
    assert conv.in_channels == method.encoder.num_features == 24 * 4
    assert conv.out_channels == stride**2 * 1
    images = torch.randn(2, 1, 16, 16)
    out = method.forward_mim(images)
    assert out.pred.shape == images.shape
    out.loss.backward()
    assert method.mask_token.grad.abs().sum() > 0  # the loss reaches the mask token through every stage


def test_swin_layer_ids_for_layer_decay():
    depths = [2, 2, 4]
    assert swin_layer_id("patch_embed.proj.weight", depths) == 0
    assert swin_layer_id("layers.0.blocks.1.attn.qkv.weight", depths) == 2
    assert swin_layer_id("layers.1.downsample.reduction.weight", depths) == 2  # with stage 1's last block
    assert swin_layer_id("layers.2.blocks.3.mlp.fc1.weight", depths) == 8
    assert swin_layer_id("head.fc.weight", depths) == 9
    method = build_method(resolved(load_config(None, [*SWIN_TINY, "method.name=supervised", "method.layer_decay=0.5"])))
    groups = layer_decay_groups(method.encoder, 0.05, 0.5)
    scales = {g["layer"]: g["lr_scale"] for g in groups}
    assert scales[0] == pytest.approx(0.5**4) and scales[4] == pytest.approx(1.0)  # femto: 3 blocks
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert any("logit_scale" in n for n in no_decay) and any("cpb_mlp" in n for n in no_decay)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["method.name=mae"], "needs a ViT"),
        (["data.img_size=24"], "final stride 16"),
        (["model.stage_depths=[1,1]"], "one entry per stage"),
        (["model.stage_heads=[1,5,4]"], "do not divide stage 2"),
        (["model.depth=5"], "model.stage_depths"),
    ],
)
def test_swin_config_errors(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [*SWIN_TINY, *overrides])


def test_window_size_on_a_vit_is_an_error():
    with pytest.raises(ConfigError, match="SwinV2 setting"):
        load_config(None, [*TINY, "model.window_size=4"])


@pytest.mark.slow
def test_swin_pretrain_finetune_and_export(tmp_path):
    run_cli("pretrain", "--config", "simmim_fmnist_tiny", "--out", str(tmp_path / "pre"), *sets(SWIN_TINY), check=True)
    saved = load_config(str(tmp_path / "pre"))
    assert saved.model.stage_depths == [1, 1, 1] and saved.model.window_size == 4
    ft = run_cli(
        "finetune",
        "--init",
        str(tmp_path / "pre"),
        "--out",
        str(tmp_path / "ft"),
        *sets(TINY),
        "--set",
        "train.epochs=null",
        check=True,
    )
    assert "fresh: head.fc.weight, head.fc.bias; unused: none" in ft.stdout
    assert load_config(str(tmp_path / "ft")).model.stage_heads == [1, 2, 4]
    run_cli("export", str(tmp_path / "pre"), "--out", str(tmp_path / "enc.safetensors"), check=True)
    info = json.loads((tmp_path / "enc.safetensors.json").read_text())
    model = timm.create_model(info["timm_name"], pretrained=False, **info["timm_kwargs"])
    model.load_state_dict(load_file(str(tmp_path / "enc.safetensors")), strict=True)
