"""The Python API (mimkit.pretrain, mimkit.finetune, mimkit.transforms_for) and the timm export's data config."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import mimkit
from conftest import TINY, run_cli
from mimkit.data.transforms import eval_transform


@pytest.fixture(scope="module")
def one_channel_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "mae"
    results = mimkit.pretrain("mae_fmnist_tiny", out, overrides=[*TINY, "data.mean=[0.25]", "data.std=[0.5]"], steps=3)
    return out, results


def test_pretrain_and_finetune_from_python_train_as_the_commands_do(one_channel_run, tmp_path):
    out, results = one_channel_run
    assert results["step"] == 3 and json.loads((out / "results.json").read_text())["step"] == 3
    assert mimkit.load(out).config.train.steps == 3  # steps= set the length, as --steps does
    tuned = mimkit.finetune(out, tmp_path / "ft", overrides=[*TINY, "data.task=classification"], steps=2)
    assert tuned["step"] == 2 and "best_heldout_top1" in tuned and str(out) in tuned["init"]
    with pytest.raises(TypeError, match="overrides apply to a recipe"):
        mimkit.pretrain(mimkit.load(out).config, tmp_path / "x", overrides=["seed=1"])


def test_timm_export_says_what_the_weights_are(one_channel_run, tmp_path, caplog):
    out, _ = one_channel_run
    run_cli("export", str(out), "--out", str(tmp_path / "enc.safetensors"), check=True)
    info = json.loads((tmp_path / "enc.safetensors.json").read_text())
    with caplog.at_level(logging.INFO, logger="timm"):
        model = timm.create_model(
            info["timm_name"],
            pretrained=True,
            pretrained_cfg_overlay=info["pretrained_cfg_overlay"],
            **info["timm_kwargs"],
        )
    assert not any("Converted input conv" in r.getMessage() for r in caplog.records)  # no 3-channel adaptation
    data = timm.data.resolve_data_config({}, model=model)
    assert tuple(data["input_size"]) == (1, 16, 16) and tuple(data["mean"]) == (0.25,) and tuple(data["std"]) == (0.5,)
    assert model.pretrained_cfg["tag"] == "mimkit_mae"
    theirs, ours = mimkit.transforms_for(model), mimkit.transforms_for(out)
    image = Image.fromarray((np.random.RandomState(0).rand(28, 28) * 255).astype("uint8"), "L")
    torch.testing.assert_close(theirs(image), ours(image))  # the export's transform is the run's


def test_transforms_for_matches_mimkits_own_evaluation_input(one_channel_run):
    out, _ = one_channel_run
    pixels = (np.random.RandomState(1).rand(28, 28) * 255).astype("uint8")
    cfg = mimkit.load(out).config
    expected = eval_transform(torch.from_numpy(pixels)[None, None], 16, cfg.data.mean, cfg.data.std)[0]
    got = mimkit.transforms_for(mimkit.load(out))(Image.fromarray(pixels, "L"))
    assert got.shape == expected.shape == (1, 16, 16)
    # PIL resizes to uint8: about one grey level (1/255 / std 0.5 = 0.008) apart at most, never more
    assert (got - expected).abs().max() < 2.5 / 255 / 0.5
