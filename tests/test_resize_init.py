"""Fine-tuning at another image size (data.resize_init): a ViT's position embedding and the BEiT family's relative
position bias table are resampled as the weights load, a SwinV2 keeps its continuous position bias and records the
windows it was pretrained with; without the switch a run trains at its source's size, as before."""

from __future__ import annotations

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from conftest import TINY, tiny_config
from mimkit.api import load
from mimkit.config import ConfigError, resolved
from mimkit.models.encoder import create_encoder
from mimkit.training import pretrain
from mimkit.weights import adopt_source, load_encoder_weights, resolve_source

FINETUNE = ["method.name=supervised", "train.steps=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """SimMIM at 16 px: a plain ViT, SimMIM's BEiT-family ViT and a SwinV2 (2 steps each)."""
    root = tmp_path_factory.mktemp("resize")
    common = ["method.name=simmim", "method.mask_patch_size=4", "train.steps=2"]
    pretrain(tiny_config(*common), root / "vit")
    pretrain(tiny_config(*common, "model.family=beit"), root / "beit")
    pretrain(tiny_config(*common, "model.name=mim_swinv2_femto"), root / "swin")
    return root


def _target(run, *extra):
    """The fine-tuning config at 32 px from `run` and the fresh encoder it builds (weights not loaded)."""
    cfg = resolved(tiny_config(f"init={run}", "data.img_size=32", *FINETUNE, *extra))
    source = resolve_source(cfg.init, cfg)
    cfg = adopt_source(cfg, source)
    return cfg, source, create_encoder(cfg, fixed_sincos=False, num_classes=10, global_pool="avg")


def test_without_the_switch_a_run_trains_at_its_sources_size(runs):
    cfg, _, _ = _target(runs / "vit")
    assert cfg.data.img_size == 16


def test_vit_position_embedding_is_resampled_bicubically(runs):
    cfg, source, encoder = _target(runs / "vit", "data.resize_init=true")
    assert cfg.data.img_size == 32 and tuple(encoder.patch_embed.grid_size) == (8, 8)
    with pytest.raises(ConfigError, match="shape mismatch"):  # what happens without resampling
        load_encoder_weights(encoder, source.state, "init")
    load_encoder_weights(encoder, source.state, "init", resample=True)
    old = source.state["pos_embed"]
    torch.testing.assert_close(encoder.pos_embed.detach(), resample_abs_pos_embed(old, [8, 8], [4, 4]))
    torch.testing.assert_close(encoder.pos_embed[:, :1].detach(), old[:, :1])  # the class token's entry is kept
    torch.testing.assert_close(encoder.blocks[0].attn.qkv.weight.detach(), source.state["blocks.0.attn.qkv.weight"])


def test_beit_shared_relative_position_bias_table_is_resized(runs):
    cfg, source, encoder = _target(runs / "beit", "data.resize_init=true")
    key = "rel_pos_bias.relative_position_bias_table"
    old = source.state[key]
    assert old.shape[0] == 7 * 7 + 3 and encoder.state_dict()[key].shape[0] == 15 * 15 + 3
    load_encoder_weights(encoder, source.state, "init", resample=True)
    new = encoder.state_dict()[key]
    torch.testing.assert_close(new[-3:], old[-3:])  # the class token's three entries carry over
    assert new[:-3].std() > 0 and not torch.equal(new[:-3], torch.zeros_like(new[:-3]))


def test_swinv2_records_its_pretraining_windows_and_keeps_its_position_bias_network(runs):
    cfg, source, encoder = _target(
        runs / "swin", "data.resize_init=true", "model.name=mim_swinv2_femto", "model.window_size=4"
    )
    # 16 px, patch 4: stages of 4, 2, 1 tokens a side, so windows 4, 2, 1; at 32 px the stages are 8, 4, 2
    assert cfg.model.pretrained_window_sizes == [4, 2, 1] and cfg.model.window_size == 4
    attn = encoder.layers[1].blocks[0].attn
    assert tuple(attn.pretrained_window_size) == (2, 2)
    load_encoder_weights(encoder, source.state, "init", resample=True)
    for name, value in source.state.items():
        if "cpb_mlp" in name:
            torch.testing.assert_close(encoder.state_dict()[name], value)


@pytest.mark.parametrize("family", ["vit", "beit", "swin"])
def test_fine_tuning_at_a_new_size_trains(runs, family, tmp_path):
    results = pretrain(
        tiny_config(f"init={runs / family}", "data.img_size=32", "data.resize_init=true", *FINETUNE), tmp_path / "ft"
    )
    assert results["step"] == 2
    tuned = load(tmp_path / "ft")
    assert tuned.config.data.img_size == 32


def test_pretrained_window_sizes_are_checked():
    with pytest.raises(ConfigError, match="one window per stage"):
        tiny_config(*TINY, "model.pretrained_window_sizes=[4,4]")


def test_the_swinv2_fine_tuning_recipe_runs_at_the_official_size_and_window():
    from mimkit.config import load_config

    cfg = resolved(load_config("finetune_simmim_swinv2_base_in1k"))
    assert (cfg.data.img_size, cfg.model.window_size, cfg.data.resize_init) == (224, 14, True)
    assert (cfg.method.name, cfg.method.layer_decay, cfg.model.global_pool) == ("supervised", 0.75, "avg")
