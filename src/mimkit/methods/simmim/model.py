"""SimMIM (Xie et al. 2022): mask tokens replace masked patch embeddings, the full sequence goes through the timm
encoder (a ViT, or a SwinV2 whose head then sits at the final stride), a 1x1 conv + pixel-shuffle head predicts raw
pixels, L1 loss on masked pixels only."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.data.keyed_random import sample_keys
from mimkit.data.masks import MaskGenerator
from mimkit.fast.pixel_losses import patch_l1
from mimkit.fast.rows import gather_rows, hooked, last_block_at_rows, masked_rows
from mimkit.methods.base import Method
from mimkit.methods.mim import MIMOutput, mask_keys, paste_visible, token_mask_to_pixels
from mimkit.models.encoder import (
    channel_major_patches,
    embed_tokens,
    grid_size,
    in_chans,
    is_beit,
    patch_size,
    run_blocks,
)
from mimkit.models.swin import final_stride, is_swin_encoder, swin_masked_features


def linear_pixel_head(dim: int, patch: int, chans: int) -> nn.Sequential:
    """SimMIM's "linear decoder": one 1x1 conv to p*p*C channels, then pixel shuffle back to image resolution."""
    return nn.Sequential(nn.Conv2d(dim, patch**2 * chans, kernel_size=1), nn.PixelShuffle(patch))


def is_linear_pixel_head(head: nn.Module) -> bool:
    """Whether `head` is exactly linear_pixel_head's 1x1 conv + pixel shuffle, which the fast path runs as a linear
    layer on the masked tokens."""
    if not (isinstance(head, nn.Sequential) and len(head) == 2 and type(head[1]) is nn.PixelShuffle):
        return False
    conv = head[0]
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def local_mean_std(imgs: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel and channel, the mean and the std (unbiased variance + 1e-6, square-rooted) of its window x window
    neighbourhood, the window cut at the borders (`norm_targets` in the official SwinV2 SimMIM code)."""
    pad = window // 2
    x = imgs.float()
    mean = F.avg_pool2d(x, window, stride=1, padding=pad, count_include_pad=False)
    mean_sq = F.avg_pool2d(x * x, window, stride=1, padding=pad, count_include_pad=False)
    count = F.avg_pool2d(torch.ones_like(x[:, :1]), window, stride=1, padding=pad, count_include_pad=True) * window**2
    var = ((mean_sq - mean * mean) * (count / (count - 1))).clamp_min(0.0)
    return mean, (var + 1e-6) ** 0.5


def local_norm(imgs: torch.Tensor, window: int) -> torch.Tensor:
    """The SwinV2 SimMIM target: each pixel normalised by its local window's mean and std (local_mean_std)."""
    mean, std = local_mean_std(imgs, window)
    return (imgs.float() - mean) / std


def masked_pixel_l1(
    imgs: torch.Tensor, rec: torch.Tensor, mask: torch.Tensor, patch: int, grid: tuple[int, int], chans: int
) -> torch.Tensor:
    """L1 over masked pixels, averaged per masked pixel and channel."""
    m = token_mask_to_pixels(mask, patch, grid)
    l1 = (rec.float() - imgs.float()).abs()
    return (l1 * m).sum() / (m.sum() + 1e-5) / chans


class SimMIM(Method):
    name = "simmim"

    def __init__(
        self,
        encoder: nn.Module,
        mask_generator: MaskGenerator,
        seed: int = 0,
        target_norm_window: int = 0,
        fixed_masks: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.target_norm_window = target_norm_window
        self.mask_generator = mask_generator
        self.seed = seed
        self.fixed_masks = fixed_masks
        self.patch = patch_size(encoder)
        self.grid = grid_size(encoder)
        self.chans = in_chans(encoder)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        # the published ViT's token is a normal truncated at +-std; timm's default cut is at +-2 (no cut at 0.02)
        cut = 0.02 if is_beit(encoder) else 2.0
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-cut, b=cut)
        # ViT: one output cell per patch; SwinV2: per final-stage cell (stride 32 at 192 px, as in the paper)
        self.decoder = linear_pixel_head(encoder.num_features, final_stride(encoder), self.chans)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C_enc, h, w) features of the last stage; masked patch embeddings replaced by the mask token."""
        enc = self.encoder
        if is_swin_encoder(enc):
            return swin_masked_features(enc, imgs, mask, self.mask_token)
        x = run_blocks(enc, embed_tokens(enc, imgs, mask, self.mask_token))
        x = enc.norm(x)[:, enc.num_prefix_tokens :, :]
        b, length, dim = x.shape
        return x.transpose(1, 2).reshape(b, dim, self.grid[0], self.grid[1])

    def target_images(self, imgs: torch.Tensor) -> torch.Tensor:
        """What the head predicts: the images, or with `target_norm_window` their locally normalised pixels."""
        return local_norm(imgs, self.target_norm_window) if self.target_norm_window else imgs

    def forward_loss(self, imgs: torch.Tensor, rec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_pixel_l1(self.target_images(imgs), rec, mask, self.patch, self.grid, self.chans)

    def forward_mim(self, imgs: torch.Tensor, mask: torch.Tensor | None = None) -> MIMOutput:
        if mask is None:
            keys = torch.randint(0, 2**31, (imgs.shape[0],))
            mask = self.mask_generator(keys, self.seed)
        mask = mask.to(imgs.device)
        rec = self.decoder(self.forward_encoder(imgs, mask))
        return MIMOutput(self.forward_loss(imgs, rec, mask), rec, mask.bool())

    def training_loss(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`forward_mim(imgs, mask).loss`, the loss `forward_loss` defines. With `fast_path`, a ViT's last block and
        the head run at the masked patches only, the head as the linear layer it is; the plain code runs instead for
        SwinV2, for a head other than `linear_pixel_head`'s, when a subclass replaces forward_loss or
        forward_encoder, or when a hook on the final norm or the head expects every token. The mask must have
        `mask_generator.num_masked` masked patches per image, as the generator's masks do: that count is not
        checked, because checking it would wait for the device."""
        enc = self.encoder
        if (
            not self.fast_path
            or is_swin_encoder(enc)
            or is_beit(enc)  # its blocks read the shared relative position bias: no partial last block
            or not is_linear_pixel_head(self.decoder)
            or self.overrides(SimMIM, "forward_loss", "forward_encoder", "target_images")
            or hooked(enc.norm, self.decoder)
        ):
            return self.forward_mim(imgs, mask).loss
        mask = mask.to(imgs.device)
        rows = masked_rows(mask, self.mask_generator.num_masked)
        x = embed_tokens(enc, imgs, mask, self.mask_token)
        checkpointing = getattr(enc, "grad_checkpointing", False)
        x = last_block_at_rows(enc.blocks, x, rows + enc.num_prefix_tokens, checkpointing)
        conv = self.decoder[0]
        pred = F.linear(enc.norm(x), conv.weight.flatten(1), conv.bias)
        return patch_l1(pred, gather_rows(channel_major_patches(self.target_images(imgs), self.patch), rows))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        mask = self.mask_generator(mask_keys(batch, self.fixed_masks), self.seed)
        return {"loss": self.training_loss(batch["images"], mask)}

    @torch.no_grad()
    def reconstruct(
        self, imgs: torch.Tensor, ids: torch.Tensor, epoch: int = -1, true_patch_stats: bool = False
    ) -> dict[str, torch.Tensor]:
        """Predicted pixels are in the normalised image space; locally normalised targets (target_norm_window) are
        de-normalised with the mean and std of the image's visible pixels (each masked pixel's own window would show
        what the model never saw), or with `true_patch_stats` with each pixel's own window."""
        mask = self.mask_generator(sample_keys(ids, epoch), self.seed)
        out = self.forward_mim(imgs, mask)
        pred = out.pred.float()
        if self.target_norm_window:
            if true_patch_stats:
                mean, std = local_mean_std(imgs, self.target_norm_window)
                pred = pred * std + mean
            else:
                visible = 1 - token_mask_to_pixels(out.mask, self.patch, self.grid)
                count = visible.sum((1, 2, 3), keepdim=True) * imgs.shape[1]
                mean = (imgs.float() * visible).sum((1, 2, 3), keepdim=True) / count
                var = (((imgs.float() - mean) * visible) ** 2).sum((1, 2, 3), keepdim=True) / count
                pred = pred * (var + 1e-6) ** 0.5 + mean
        return paste_visible(imgs, pred, out.mask, self.patch, self.grid)

    def reconstruction_note(self, true_patch_stats: bool = False) -> str:
        if not self.target_norm_window:
            return ""
        if true_patch_stats:
            return f"predictions de-normalised with each pixel's TRUE {self.target_norm_window}px window (leaks)"
        return "locally normalised predictions de-normalised with the visible pixels' mean/std"


def build_simmim(cfg: Any, encoder: nn.Module, mask_generator: MaskGenerator) -> SimMIM:
    meth = cfg.method
    return SimMIM(
        encoder, mask_generator, seed=cfg.seed, target_norm_window=meth.target_norm_window, fixed_masks=meth.fixed_masks
    )
