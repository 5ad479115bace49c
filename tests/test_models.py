"""Patchify, MAE / SimMIM losses against written-out formulas, the visible-only encoder, SimMIM shapes."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_config
from mimkit.config import ConfigError, resolved
from mimkit.methods import MAE, SimMIM, build_method
from mimkit.models.encoder import patchify, unpatchify
from mimkit.models.pos_embed import sincos_2d


def _method(*extra: str):
    torch.manual_seed(0)
    return build_method(resolved(tiny_config(*extra))).eval()


def test_patchify_round_trip_and_layout():
    imgs = torch.randn(2, 3, 12, 8)
    x = patchify(imgs, 4)
    assert x.shape == (2, 6, 4 * 4 * 3)
    assert torch.equal(unpatchify(x, 4, 3, 3, 2), imgs)
    # token 4 = patch row 2, col 0; entry (p=1, q=2, c=1) is pixel (row 2*4+1, col 0*4+2) of channel 1
    assert x[1, 4, (1 * 4 + 2) * 3 + 1] == imgs[1, 1, 9, 2]


def test_mae_loss_matches_written_out_formula():
    mae = _method("method.name=mae")
    imgs = torch.randn(3, 1, 16, 16)
    noise = torch.rand(3, 16)
    out = mae.forward_mim(imgs, noise)
    patches = patchify(imgs, 4)
    total, count = 0.0, 0
    for n in range(3):
        for p in range(16):
            if out.mask[n, p]:
                t = patches[n, p]
                t = (t - t.mean()) / math.sqrt(t.var(unbiased=True).item() + 1e-6)
                total += ((out.pred[n, p] - t) ** 2).mean().item()
                count += 1
    assert count == 3 * (16 - int(16 * 0.25))
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)


def test_mae_loss_without_norm_pix_uses_raw_patches():
    mae = _method("method.name=mae", "method.norm_pix=false")
    imgs = torch.randn(2, 1, 16, 16)
    out = mae.forward_mim(imgs, torch.rand(2, 16))
    per_patch = ((out.pred - patchify(imgs, 4)) ** 2).mean(-1)
    expected = per_patch[out.mask].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mae_masking_keeps_lowest_noise_and_decoder_restores_order():
    mae = _method("method.name=mae")
    noise = torch.rand(4, 16)
    x = torch.arange(16.0).view(1, 16, 1).expand(4, 16, 1)
    visible, mask, ids_restore = mae.random_masking(x, noise)
    keep = 16 - int(16 * 0.25)
    for n in range(4):
        lowest = set(torch.argsort(noise[n])[: 16 - keep].tolist())
        assert set(visible[n, :, 0].long().tolist()) == lowest
        assert set(torch.nonzero(mask[n] == 0).flatten().tolist()) == lowest


def test_mae_visible_only_encoder_equals_timm_on_the_visible_tokens():
    """The encoder sees only visible tokens; running the stock timm blocks on [cls, visible in original order]
    gives the same features (attention is permutation-equivariant, so MAE's shuffled order changes nothing)."""
    mae = _method("method.name=mae")
    enc = mae.encoder
    imgs = torch.randn(2, 1, 16, 16)
    noise = torch.rand(2, 16)
    latent, mask, ids_restore = mae.forward_encoder(imgs, noise)
    assert latent.shape == (2, 1 + 4, enc.embed_dim)
    tokens = enc.patch_embed(imgs) + enc.pos_embed[:, 1:]
    for n in range(2):
        visible_pos = torch.nonzero(mask[n] == 0).flatten()  # ascending original positions
        seq = torch.cat([enc.cls_token + enc.pos_embed[:, :1], tokens[n : n + 1, visible_pos]], dim=1)
        ref = enc.norm(enc.blocks(seq))[0]
        order = torch.argsort(noise[n])[:4]  # mimkit's order: by noise
        ours = latent[n, 1:][torch.argsort(order)]  # back to ascending position
        torch.testing.assert_close(latent[n, 0], ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours, ref[1:], atol=1e-5, rtol=1e-5)


def test_mae_position_embedding_is_fixed_sincos():
    mae = _method("method.name=mae")
    assert not mae.encoder.pos_embed.requires_grad and not mae.decoder_pos_embed.requires_grad
    torch.testing.assert_close(mae.encoder.pos_embed[0], sincos_2d(mae.encoder.embed_dim, 4))
    assert torch.all(mae.encoder.pos_embed[0, 0] == 0)


def test_sincos_matches_transformers_reference():
    """HF ViTMAE reproduces the official MAE table (including its h/w half order); so must mimkit."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.vit_mae.modeling_vit_mae import ViTMAEEmbeddings

    emb = ViTMAEEmbeddings(transformers.ViTMAEConfig(hidden_size=64, image_size=28, patch_size=4, num_channels=1))
    emb.initialize_weights()
    ref = emb.position_embeddings.detach()[0]
    assert ref.abs().sum() > 0
    torch.testing.assert_close(sincos_2d(64, 7, cls_token=True), ref)


def test_simmim_shapes_and_l1_formula():
    sim = _method("method.name=simmim", "method.mask_patch_size=8")
    assert isinstance(sim, SimMIM)
    imgs = torch.randn(3, 1, 16, 16)
    mask = sim.mask_generator(torch.arange(3), 0)
    out = sim.forward_mim(imgs, mask)
    assert out.pred.shape == imgs.shape
    pix = mask.view(3, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).float()
    expected = ((out.pred - imgs).abs() * pix).sum() / (pix.sum() + 1e-5) / 1
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_simmim_masked_pixels_do_not_reach_the_encoder():
    sim = _method("method.name=simmim", "method.mask_patch_size=8")
    imgs = torch.randn(2, 1, 16, 16)
    mask = sim.mask_generator(torch.arange(2), 0)
    pix = mask.view(2, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    changed = torch.where(pix, torch.randn_like(imgs) * 5, imgs)
    feats_a = sim.forward_encoder(imgs, mask)
    feats_b = sim.forward_encoder(changed, mask)
    torch.testing.assert_close(feats_a, feats_b)
    unmasked = sim.forward_encoder(changed, torch.zeros_like(mask))
    assert not torch.allclose(unmasked, feats_a)


def test_mae_gradients_flow_only_to_trainable_parameters():
    mae = _method("method.name=mae").train()
    assert isinstance(mae, MAE)
    loss = mae({"images": torch.randn(4, 1, 16, 16), "keys": torch.arange(4)})["loss"]
    loss.backward()
    assert mae.encoder.pos_embed.grad is None
    assert mae.mask_token.grad is not None and mae.mask_token.grad.abs().sum() > 0
    assert mae.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_weight_decay_groups_exclude_norms_biases_tokens():
    mae = _method("method.name=mae")
    groups = mae.param_groups(0.05)
    names = {id(p): n for n, p in mae.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    undecayed = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert "encoder.cls_token" in undecayed and "mask_token" in undecayed
    assert "encoder.blocks.0.norm1.weight" in undecayed and "encoder.blocks.0.attn.qkv.bias" in undecayed
    assert "encoder.blocks.0.attn.qkv.weight" in decayed and "decoder_pred.weight" in decayed
    assert "encoder.pos_embed" not in decayed | undecayed  # fixed, not trained


def test_timm_model_names_build_with_overrides():
    cfg = resolved(
        tiny_config(
            "model.name=vit_small_patch16_224",
            "model.patch_size=4",
            "model.depth=1",
            "model.embed_dim=32",
            "model.num_heads=2",
        )
    )
    method = build_method(cfg)
    assert method.encoder.patch_embed.patch_size == (4, 4)
    assert len(method.encoder.blocks) == 1 and method.encoder.embed_dim == 32


def test_deit_names_are_timm_vits_but_distilled_deit_is_refused():
    """DeiT is the supervised baseline of the MIM papers: its plain models build like any timm ViT; the distilled
    variants carry a second prefix token that the MIM wrappers do not expect."""
    from mimkit.config import ConfigError

    cfg = resolved(tiny_config("model.name=deit_tiny_patch16_224", "model.patch_size=4", "model.depth=1"))
    assert (cfg.model.embed_dim, cfg.model.num_heads) == (192, 3)
    assert len(build_method(cfg).encoder.blocks) == 1
    with pytest.raises(ConfigError, match="neither a mimkit preset"):
        resolved(tiny_config("model.name=deit_tiny_distilled_patch16_224"))


@pytest.mark.parametrize(
    "rule, expected",
    [("linear", [0.0, 0.05, 0.1]), ("constant_but_last", [0.1, 0.1, 0.0])],
)
def test_drop_path_rule_sets_each_blocks_rate(rule, expected):
    """timm's linear rule, and TinyMIM's: the rate in every block but the last, none in the last."""
    from timm.layers import DropPath

    cfg = resolved(tiny_config("model.drop_path=0.1", f"model.drop_path_rule={rule}"))  # femto: 3 blocks
    encoder = build_method(cfg).encoder
    for block, rate in zip(encoder.blocks, expected, strict=True):
        for module in (block.drop_path1, block.drop_path2):
            if rate == 0:
                assert isinstance(module, torch.nn.Identity)
            else:
                assert isinstance(module, DropPath) and module.drop_prob == pytest.approx(rate)


def test_drop_path_rule_is_checked():
    with pytest.raises(ConfigError, match="model.drop_path_rule: 'cosine' is not one of linear, constant_but_last"):
        tiny_config("model.drop_path_rule=cosine")


def _masked_pixels_changed_without_effect(cfg):
    """Reconstruct two images, then the same images with only their masked pixels changed (brighter, noisier): the
    reconstruction must be the first one's predictions under the mask and the changed images elsewhere, i.e. the
    prediction may not read the masked pixels. Returns (method, images, ids, changed images, the first output)."""
    method = build_method(cfg).eval()
    torch.manual_seed(0)
    imgs, ids = torch.randn(2, 1, 16, 16), torch.tensor([3, 7])
    out = method.reconstruct(imgs, ids)
    mask = out["pixel_mask"]
    assert 0 < mask.mean() < 1
    changed = imgs + (3.0 + 2.0 * torch.randn_like(imgs)) * mask
    torch.testing.assert_close(
        method.reconstruct(changed, ids)["reconstruction"], out["reconstruction"] * mask + changed * (1 - mask)
    )
    return method, imgs, ids, changed, out


def test_mae_reconstructions_do_not_leak_the_masked_patches():
    """Norm-pix predictions are de-normalised with the visible patches' average mean and within-patch variance:
    changing only the masked pixels leaves the reconstruction as it was. The official demo's shortcut (each masked
    patch's own statistics), on request, does not."""
    from mimkit.data.keyed_random import sample_keys

    cfg = resolved(tiny_config())  # MAE, norm_pix on
    method, imgs, ids, changed, out = _masked_pixels_changed_without_effect(cfg)
    mask = out["pixel_mask"]
    leaky = method.reconstruct(imgs, ids, true_patch_stats=True)["reconstruction"]
    leaky_changed = method.reconstruct(changed, ids, true_patch_stats=True)["reconstruction"]
    assert not torch.allclose(leaky * mask, leaky_changed * mask, atol=1e-2)
    # written out: visible patches' mean of means and mean of (unbiased) variances
    with torch.no_grad():
        noise = method.mask_generator.noise(sample_keys(ids, -1), method.seed)
        mim = method.forward_mim(imgs, noise)
    patches = patchify(imgs, 4)
    visible = ~mim.mask
    expected = []
    for b in range(2):
        m = patches[b][visible[b]].mean(-1).mean()
        v = patches[b][visible[b]].var(-1, unbiased=True).mean()
        expected.append(mim.pred[b] * (v + 1e-6).sqrt() + m)
    expected = unpatchify(torch.stack(expected), 4, 1, 4)
    torch.testing.assert_close(out["reconstruction"] * mask, expected * mask, atol=1e-5, rtol=1e-5)
    assert "visible patches" in method.reconstruction_note() and "TRUE" in method.reconstruction_note(True)


def test_simmim_local_target_norm_matches_a_written_out_window():
    """Each pixel minus its window's mean over the window's std (unbiased variance + 1e-6), the window cut at the
    image borders, channel by channel."""
    from mimkit.methods.simmim.model import local_norm

    torch.manual_seed(0)
    imgs = torch.rand(2, 3, 7, 6) * 4
    window = 5
    got = local_norm(imgs, window)
    r = window // 2
    for b in range(2):
        for c in range(3):
            for i in range(7):
                for j in range(6):
                    patch = imgs[b, c, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].flatten().double()
                    expected = (imgs[b, c, i, j] - patch.mean()) / (patch.var(unbiased=True) + 1e-6).sqrt()
                    assert got[b, c, i, j].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)


def test_simmim_target_norm_trains_on_the_normalised_target_on_both_paths():
    cfg = resolved(tiny_config("method.name=simmim", "method.mask_patch_size=8", "method.target_norm_window=5"))
    method = build_method(cfg)
    from mimkit.data.keyed_random import sample_keys
    from mimkit.methods.simmim.model import local_norm, masked_pixel_l1

    torch.manual_seed(0)
    imgs = torch.randn(4, 1, 16, 16)
    mask = method.mask_generator(sample_keys(torch.arange(4), 0), method.seed)
    fast = method.training_loss(imgs, mask)
    with method.plain_path():
        plain = method.training_loss(imgs, mask)
    with torch.no_grad():
        rec = method.decoder(method.forward_encoder(imgs, mask))
    expected = masked_pixel_l1(local_norm(imgs, 5), rec, mask, method.patch, method.grid, method.chans)
    torch.testing.assert_close(plain, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    raw = masked_pixel_l1(imgs, rec, mask, method.patch, method.grid, method.chans)
    assert abs(raw.item() - plain.item()) > 1e-3  # the normalised target is another target
    with pytest.raises(ConfigError, match="target_norm_window: 4 must be 0 .off. or an odd size"):
        tiny_config("method.name=simmim", "method.target_norm_window=4")


def test_reconstruction_figure_asks_for_the_chosen_statistics_and_says_which(tmp_path, monkeypatch):
    from mimkit.data.datasets import build_data
    from mimkit.viz import reconstructions as viz

    cfg = resolved(tiny_config())
    method = build_method(cfg)
    data = build_data(cfg, lambda *_: None)
    titles = []
    monkeypatch.setattr(viz.plt.Figure, "suptitle", lambda self, text, **kw: titles.append(text))
    for leak in (False, True):
        path = viz.reconstruction_figure(
            method, data.train, data.heldout, cfg, tmp_path / f"{leak}.png", n=2, true_patch_stats=leak
        )
        assert path.is_file()
    assert "visible patches' mean/std" in titles[0] and "TRUE mean/std (leaks" in titles[1]


def test_simmim_target_norm_reconstructions_do_not_leak_the_masked_pixels():
    """With locally normalised targets, predictions are de-normalised with the visible pixels' mean and std: changing
    only the masked pixels leaves the reconstruction as it was; each pixel's own window (on request) does not."""
    cfg = resolved(tiny_config("method.name=simmim", "method.mask_patch_size=8", "method.target_norm_window=5"))
    method, imgs, ids, changed, out = _masked_pixels_changed_without_effect(cfg)
    mask = out["pixel_mask"]
    leaky = method.reconstruct(imgs, ids, true_patch_stats=True)["reconstruction"]
    leaky_changed = method.reconstruct(changed, ids, true_patch_stats=True)["reconstruction"]
    assert not torch.allclose(leaky * mask, leaky_changed * mask, atol=1e-2)
    assert "visible pixels" in method.reconstruction_note() and "TRUE" in method.reconstruction_note(True)


def test_mae_init_scheme_starts_a_scratch_encoder_as_mae_starts_its_own():
    torch.manual_seed(0)
    mae = build_method(resolved(tiny_config("method.name=mae")))
    torch.manual_seed(0)
    scratch = build_method(resolved(tiny_config("method.name=supervised", "model.init_scheme=mae")))
    torch.manual_seed(0)
    timm_init = build_method(resolved(tiny_config("method.name=supervised")))
    enc = scratch.encoder
    torch.testing.assert_close(enc.pos_embed[0], sincos_2d(enc.embed_dim, 4, cls_token=True))
    assert enc.pos_embed.requires_grad  # trainable, unlike MAE's own fixed table
    for (name, ours), theirs in zip(enc.blocks.named_parameters(), mae.encoder.blocks.parameters()):
        # the same distribution as MAE's encoder: xavier-uniform weights (bound sqrt(6 / (fan_in + fan_out))), zero
        # biases, unit LayerNorms; not timm's N(0, 0.02)
        if name.endswith("weight") and ours.ndim == 2:
            bound = (6 / sum(ours.shape)) ** 0.5
            assert ours.abs().max() <= bound and ours.abs().max() > 0.8 * bound, name
            assert theirs.abs().max() <= bound, name
        elif name.endswith("bias"):
            assert torch.equal(ours, torch.zeros_like(ours)), name
    timm_w = timm_init.encoder.blocks[0].attn.qkv.weight
    assert timm_w.abs().max() < 0.1 < enc.blocks[0].attn.qkv.weight.abs().max()  # truncated N(0, .02) vs xavier
    torch.testing.assert_close(enc.head.weight.std(), timm_init.encoder.head.weight.std(), rtol=0.3, atol=0.0)
