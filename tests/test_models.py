"""Patchify, MAE / SimMIM losses against written-out formulas, the visible-only encoder, SimMIM shapes."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_config
from mimkit.config import resolved
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
