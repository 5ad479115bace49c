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


def assert_same_mae_outputs(hf, ours, imgs, noise):
    """HF ViTMAE and mimkit's MAE on the same images and noise: the same mask, predictions and loss (fp32)."""
    with torch.no_grad():
        ref = hf(pixel_values=imgs, noise=noise)
        out = ours.forward_mim(imgs, noise)
    torch.testing.assert_close(out.mask.float(), ref.mask.float())
    torch.testing.assert_close(out.pred, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=0)


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
    assert_same_mae_outputs(hf, ours, imgs, noise)


def test_hf_import_via_cli_and_bad_directory(tmp_path):
    hf = _tiny_hf()
    hf.save_pretrained(tmp_path / "hf")
    proc = run_cli("import", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), check=True)
    assert "import" in proc.stdout and "(hf, encoder" in proc.stdout and str(tmp_path / "run") in proc.stdout
    whole = run_cli("--json", "import", str(tmp_path / "hf"), "--out", str(tmp_path / "run3"), check=True)
    assert json.loads(whole.stdout)["format"] == "hf"
    (tmp_path / "empty").mkdir()
    bad = run_cli("import", str(tmp_path / "empty"), "--out", str(tmp_path / "run2"))
    assert bad.returncode == 2 and "config.json" in bad.stderr and "Traceback" not in bad.stderr


def _official_style_pth(path, encoder_only=False, with_args=True, qkv_scale=1.0, **arg_values):
    """A checkpoint shaped like facebookresearch/mae's: {'model', 'optimizer', 'epoch', 'args': Namespace}; the
    source model has 3 encoder and 4 decoder heads, which its state dict does not say."""
    hf = _tiny_hf()
    hf.save_pretrained(path.parent / "hf_src")
    import_checkpoint(path.parent / "hf_src", path.parent / "src_run")
    source = load(path.parent / "src_run")
    state = {}
    for key, value in source.state_dict().items():
        if key.startswith("encoder."):  # qkv_scale sharpens the attention, so that head counts matter
            state[key[len("encoder.") :]] = value * qkv_scale if key.endswith("attn.qkv.weight") else value
        elif not encoder_only:
            state[key] = value
    values = dict(model="mae_vit_tiny_custom", input_size=16, mask_ratio=0.75, norm_pix_loss=True, blr=1.5e-4)
    values.update(arg_values)
    blob = {"model": state, "epoch": 799, "optimizer": {}}
    if with_args:
        blob["args"] = argparse.Namespace(**{k: v for k, v in values.items() if v is not None})
    torch.save(blob, path)
    return source


HEADS = ["model.num_heads=3", "model.decoder_heads=4"]


def _loss(method, seed=1):
    torch.manual_seed(seed)
    imgs, noise = torch.randn(4, 3, 16, 16), torch.rand(4, 16)
    with torch.no_grad():
        return method.forward_mim(imgs, noise).loss


def test_official_mae_pth_import_loads_safely_and_matches(tmp_path):
    source = _official_style_pth(tmp_path / "mae.pth")
    with pytest.raises(Exception):  # plain weights_only loading refuses the pickled Namespace...
        torch.load(tmp_path / "mae.pth", weights_only=True)
    import_checkpoint(tmp_path / "mae.pth", tmp_path / "run", overrides=HEADS)  # ...mimkit allow-lists that class
    ours = load(tmp_path / "run")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, msg=key)
    assert ours.norm_pix is True  # args.norm_pix_loss
    torch.testing.assert_close(_loss(ours), _loss(source), atol=1e-6, rtol=0)  # the same model, not just weights


def test_official_pth_import_asks_for_head_counts_instead_of_guessing(tmp_path, capsys):
    from mimkit.cli import main

    _official_style_pth(tmp_path / "mae.pth", qkv_scale=30.0)
    with pytest.raises(ImportError_, match="--set model.num_heads=N --set model.decoder_heads=N"):
        import_checkpoint(tmp_path / "mae.pth", tmp_path / "run")
    assert main(["import", str(tmp_path / "mae.pth"), "--out", str(tmp_path / "run")]) == 2
    assert "does not say how many attention heads" in capsys.readouterr().err
    import_checkpoint(tmp_path / "mae.pth", tmp_path / "three", overrides=HEADS)
    import_checkpoint(tmp_path / "mae.pth", tmp_path / "one", overrides=["model.num_heads=1", "model.decoder_heads=4"])
    # the same weights read with another head count are another model: its encoder's features differ
    torch.manual_seed(2)
    imgs = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        one, three = (load(tmp_path / d).encoder.forward_features(imgs) for d in ("one", "three"))
    assert (one - three).norm() > 0.1 * three.norm()
    with pytest.raises(ImportError_, match="takes only"):
        import_checkpoint(tmp_path / "mae.pth", tmp_path / "x", overrides=["model.depth=3"])


def test_official_size_in_args_or_file_name_gives_the_head_counts(tmp_path):
    from mimkit.interop.imports import read_mae_pth

    _official_style_pth(tmp_path / "a.pth", model="mae_vit_base_patch16")
    cfg, _ = read_mae_pth(tmp_path / "a.pth")
    assert (cfg.model.num_heads, cfg.model.decoder_heads) == (12, 16)
    _official_style_pth(tmp_path / "mae_visualize_vit_large.pth", with_args=False)
    cfg, _ = read_mae_pth(tmp_path / "mae_visualize_vit_large.pth")  # the released file: no args, no warning
    assert (cfg.model.num_heads, cfg.model.decoder_heads, cfg.method.norm_pix) == (16, 16, False)


def test_official_pth_norm_pix_from_args_else_the_official_default(tmp_path):
    from mimkit.interop.imports import read_mae_pth

    _official_style_pth(tmp_path / "a.pth", norm_pix_loss=False)
    assert read_mae_pth(tmp_path / "a.pth", HEADS)[0].method.norm_pix is False
    _official_style_pth(tmp_path / "b.pth", norm_pix_loss=None)  # args without norm_pix_loss
    with pytest.warns(UserWarning, match="official default, raw-pixel targets"):
        assert read_mae_pth(tmp_path / "b.pth", HEADS)[0].method.norm_pix is False
    assert read_mae_pth(tmp_path / "b.pth", [*HEADS, "method.norm_pix=true"])[0].method.norm_pix is True


def test_official_encoder_only_pth_gets_fresh_decoder(tmp_path):
    _official_style_pth(tmp_path / "enc.pth", encoder_only=True)
    with pytest.warns(UserWarning, match="encoder only"):
        import_checkpoint(tmp_path / "enc.pth", tmp_path / "run", overrides=["model.num_heads=3"])
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


def test_exporting_a_run_twice_gives_the_same_bytes(tmp_path):
    """A comparison keys an exported encoder by its content (weights/identity.py): a second export of the same run
    must not look like another model. safetensors writes its metadata in a hash map's order; mimkit sorts it."""
    from mimkit.engine.atomic import save_safetensors
    from mimkit.interop.export import export_encoder

    hf = _tiny_hf()
    hf.save_pretrained(tmp_path / "hf")
    import_checkpoint(tmp_path / "hf", tmp_path / "run")
    blobs = set()
    for i in range(4):  # in one process too, each save's hash map has its own order
        export_encoder(tmp_path / "run", tmp_path / f"enc{i}.safetensors")
        blobs.add((tmp_path / f"enc{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    metadata = {f"key{i}": str(i) for i in range(6)}
    tensors = {"b": torch.arange(5.0), "a": torch.ones(2, 3)}
    for i in range(6):
        save_safetensors(tensors, tmp_path / f"t{i}.safetensors", metadata)
    assert len({(tmp_path / f"t{i}.safetensors").read_bytes() for i in range(6)}) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "t0.safetensors"), "pt") as fh:
        assert fh.metadata() == metadata  # the library still reads the rewritten header
    torch.testing.assert_close(load_file(str(tmp_path / "t0.safetensors"))["b"], tensors["b"])


def test_hf_export_loads_in_transformers_with_the_same_loss_and_round_trips(tmp_path):
    """A mimkit MAE run -> `mimkit export --format hf` -> ViTMAEForPreTraining.from_pretrained: the same loss and
    predictions for the same noise; importing that directory back gives mimkit's own weights."""
    transformers = pytest.importorskip("transformers")
    from conftest import tiny_config
    from mimkit.training import pretrain

    pretrain(tiny_config("method.norm_pix=false", "train.steps=2", "data.in_chans=3"), tmp_path / "r")
    proc = run_cli("export", str(tmp_path / "r"), "--out", str(tmp_path / "hf"), "--format", "hf", check=True)
    assert "ViTMAEForPreTraining.from_pretrained" in proc.stdout
    hf = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf").eval()
    ours = load(tmp_path / "r")
    assert hf.config.norm_pix_loss is False and hf.config.num_channels == 3  # the official default
    torch.manual_seed(2)
    imgs = torch.randn(3, 3, 16, 16)
    noise = torch.rand(3, 16)
    assert_same_mae_outputs(hf, ours, imgs, noise)
    import_checkpoint(tmp_path / "hf", tmp_path / "back")
    again = load(tmp_path / "back").state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(again[key], value), key
    from mimkit.config import resolved
    from mimkit.interop.hf_export import ExportError, hf_config_of
    from mimkit.methods import build_method

    def built(*extra):  # a Method with its config attached, as mimkit.load returns it
        method = build_method(resolved(tiny_config(*extra)))
        method.config = resolved(tiny_config(*extra))
        return method

    assert hf_config_of(built("method.norm_pix=true"))["norm_pix_loss"] is True
    with pytest.raises(ExportError, match="SimMIM, not MAE"):
        hf_config_of(built("method.name=simmim", "method.mask_patch_size=8"))
