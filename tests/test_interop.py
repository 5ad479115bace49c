"""Weights in and out: HF ViTMAE import (same loss and predictions), official MAE .pth import, timm export."""

from __future__ import annotations

import argparse
import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from conftest import run_cli
from mimkit import load
from mimkit.interop.imports import ImportError_, import_checkpoint


def _tiny_hf(norm_pix: bool = True, eps: float = 1e-6):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTMAEConfig(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=192,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=128,
        image_size=16,
        patch_size=4,
        num_channels=3,
        mask_ratio=0.75,
        norm_pix_loss=norm_pix,
        layer_norm_eps=eps,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(cfg).eval()
    model.vit.embeddings.initialize_weights()
    with torch.no_grad():  # random, non-trivial weights everywhere (HF init leaves some at zero/one)
        for name, p in model.named_parameters():
            if "position_embeddings" not in name and "decoder_pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("norm_pix,eps", [(True, 1e-6), (False, 1e-12)])
def test_hf_vitmae_import_gives_same_loss_and_predictions(tmp_path, norm_pix, eps):
    hf = _tiny_hf(norm_pix, eps)
    hf.save_pretrained(tmp_path / "hf")
    info = import_checkpoint(tmp_path / "hf", tmp_path / "run")
    assert info["format"] == "hf"
    ours = load(tmp_path / "run")
    assert ours.norm_pix is norm_pix
    torch.manual_seed(1)
    imgs = torch.randn(4, 3, 16, 16)
    noise = torch.rand(4, 16)
    with torch.no_grad():
        ref = hf(pixel_values=imgs, noise=noise)
        out = ours.forward_mim(imgs, noise)
    torch.testing.assert_close(out.mask.float(), ref.mask.float())
    torch.testing.assert_close(out.pred, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=0)


def test_hf_import_via_cli_and_bad_directory(tmp_path):
    hf = _tiny_hf()
    hf.save_pretrained(tmp_path / "hf")
    proc = run_cli("import", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), check=True)
    assert json.loads(proc.stdout)["format"] == "hf"
    (tmp_path / "empty").mkdir()
    bad = run_cli("import", str(tmp_path / "empty"), "--out", str(tmp_path / "run2"))
    assert bad.returncode == 2 and "config.json" in bad.stderr and "Traceback" not in bad.stderr


def _official_style_pth(path, encoder_only=False):
    """A checkpoint shaped like facebookresearch/mae's: {'model', 'optimizer', 'epoch', 'args': Namespace}."""
    hf = _tiny_hf()
    hf.save_pretrained(path.parent / "hf_src")
    import_checkpoint(path.parent / "hf_src", path.parent / "src_run")
    source = load(path.parent / "src_run")
    state = {}
    for key, value in source.state_dict().items():
        if key.startswith("encoder."):
            state[key[len("encoder.") :]] = value
        elif not encoder_only:
            state[key] = value
    args = argparse.Namespace(
        model="mae_vit_tiny_custom", input_size=16, mask_ratio=0.75, norm_pix_loss=True, blr=1.5e-4
    )
    torch.save({"model": state, "epoch": 799, "args": args, "optimizer": {}}, path)
    return source


def test_official_mae_pth_import_loads_safely_and_matches(tmp_path):
    source = _official_style_pth(tmp_path / "mae.pth")
    with pytest.raises(Exception):  # plain weights_only loading refuses the pickled Namespace...
        torch.load(tmp_path / "mae.pth", weights_only=True)
    import_checkpoint(tmp_path / "mae.pth", tmp_path / "run")  # ...mimkit allow-lists exactly that class
    ours = load(tmp_path / "run")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, msg=key)


def test_official_encoder_only_pth_gets_fresh_decoder(tmp_path):
    _official_style_pth(tmp_path / "enc.pth", encoder_only=True)
    with pytest.warns(UserWarning, match="encoder only"):
        import_checkpoint(tmp_path / "enc.pth", tmp_path / "run")
    assert load(tmp_path / "run").decoder_blocks is not None


def test_pth_with_arbitrary_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": {"x": torch.zeros(1)}, "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ImportError_, match="not a loadable MAE checkpoint"):
        import_checkpoint(tmp_path / "evil.pth", tmp_path / "run")


def test_export_loads_strictly_in_timm(tmp_path):
    hf = _tiny_hf()
    hf.save_pretrained(tmp_path / "hf")
    import_checkpoint(tmp_path / "hf", tmp_path / "run")
    proc = run_cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "enc.safetensors"), check=True)
    assert "timm.create_model" in proc.stdout
    info = json.loads((tmp_path / "enc.safetensors.json").read_text())
    weights = load_file(str(tmp_path / "enc.safetensors"))
    assert not any(k.startswith(("decoder", "mask_token")) for k in weights)
    model = timm.create_model(
        info["timm_name"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "enc.safetensors")),
        **info["timm_kwargs"],
    )
    fresh = timm.create_model(info["timm_name"], pretrained=False, **info["timm_kwargs"])
    result = fresh.load_state_dict(weights, strict=True)  # strict: no missing or unexpected keys
    assert not result.missing_keys and not result.unexpected_keys
    ours = load(tmp_path / "run")
    for key, value in ours.encoder.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        # same weights and eps: timm's own forward equals mimkit's encoder forward (eps differs only if not 1e-6)
        torch.testing.assert_close(model.forward_features(x), ours.encoder.forward_features(x), atol=1e-5, rtol=1e-5)
