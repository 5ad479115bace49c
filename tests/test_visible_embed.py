"""MAE's patch embedding at the visible patches only: the tokens and gradients of embedding every patch, gathered."""

from __future__ import annotations

import pytest
import torch
from timm.layers import PatchEmbed

from conftest import tiny_config
from mimkit.bench.flops import count_flops
from mimkit.config import resolved
from mimkit.fast.rows import gather_rows
from mimkit.fast.visible_embed import embed_patches_at, embeds_patches_alone
from mimkit.methods import build_method


class _Holder(torch.nn.Module):
    def __init__(self, embed: torch.nn.Module):
        super().__init__()
        self.patch_embed = embed


@pytest.mark.parametrize("chans, norm", [(1, False), (3, True)])
def test_embedding_the_visible_patches_equals_embedding_all_then_gathering(chans, norm):
    torch.manual_seed(0)
    vit = _Holder(
        PatchEmbed(
            img_size=16, patch_size=4, in_chans=chans, embed_dim=8, norm_layer=torch.nn.LayerNorm if norm else None
        )
    )
    images = torch.randn(3, chans, 16, 16, requires_grad=True)
    ids = torch.stack([torch.randperm(16)[:5] for _ in range(3)])
    weight = torch.randn(3, 5, 8)  # a loss that weighs every output differently
    assert embeds_patches_alone(vit, images)

    full = gather_rows(vit.patch_embed(images), ids)
    (full * weight).sum().backward()
    expected = {n: p.grad.clone() for n, p in vit.named_parameters()}
    expected_images = images.grad.clone()
    vit.zero_grad()
    images.grad = None
    visible = embed_patches_at(vit, images, ids)
    (visible * weight).sum().backward()

    torch.testing.assert_close(visible, full)
    torch.testing.assert_close(images.grad, expected_images)
    for name, param in vit.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], msg=name)


def test_patch_embeddings_that_must_run_whole():
    embed = PatchEmbed(img_size=16, patch_size=4, in_chans=1, embed_dim=8)
    vit = _Holder(embed)
    images = torch.randn(2, 1, 16, 16)
    assert embeds_patches_alone(vit, images)
    assert not embeds_patches_alone(vit, torch.randn(2, 1, 20, 20))  # not the model's image size
    handle = embed.proj.register_forward_hook(lambda *args: None)
    assert not embeds_patches_alone(vit, images)  # a hook expects every patch
    handle.remove()
    overlapping = PatchEmbed(img_size=16, patch_size=4, in_chans=1, embed_dim=8)
    overlapping.proj = torch.nn.Conv2d(1, 8, kernel_size=4, stride=2)
    assert not embeds_patches_alone(_Holder(overlapping), images)
    assert not embeds_patches_alone(
        _Holder(PatchEmbed(img_size=16, patch_size=4, in_chans=1, embed_dim=8, dynamic_img_pad=True)), images
    )
    assert not embeds_patches_alone(torch.nn.Module(), images)


def test_mae_training_embeds_fewer_patches_unless_a_hook_watches_the_embedding():
    torch.manual_seed(0)
    method = build_method(resolved(tiny_config("method.name=mae"))).train()
    images = torch.randn(2, 1, 16, 16)
    noise = torch.rand(2, 16)
    visible = method.forward_encoder(images, noise, visible_only=True)
    whole = method.forward_encoder(images, noise)
    for a, b in zip(visible, whole):
        torch.testing.assert_close(a, b)
    cheaper = count_flops(lambda: method.forward_encoder(images, noise, visible_only=True)[0].sum().backward())
    assert cheaper < count_flops(lambda: method.forward_encoder(images, noise)[0].sum().backward())

    seen = []
    method.encoder.patch_embed.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    method({"images": images, "keys": torch.arange(2)})
    assert seen == [(2, 16, method.encoder.embed_dim)]  # every patch, as without the fast path
