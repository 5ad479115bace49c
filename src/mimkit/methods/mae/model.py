"""MAE (He et al. 2022): a timm ViT encoder on visible patches only, a light decoder of timm Blocks, per-patch
normalised-pixel MSE on masked patches. Named steps mirror the paper so each is testable alone."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.data.keyed_random import sample_keys
from mimkit.data.masks import MaskGenerator
from mimkit.fast.pixel_losses import norm_pix_target, patch_mean_var, patch_mse
from mimkit.fast.rows import gather_rows, hooked, last_block_at_rows, masked_rows
from mimkit.fast.visible_embed import embed_patches_at, embeds_patches_alone
from mimkit.methods.base import Method
from mimkit.methods.mim import MIMOutput, mask_keys, paste_visible
from mimkit.models.encoder import (
    checkpointed,
    grid_size,
    in_chans,
    init_mae_weights,
    init_patch_embed_like_linear,
    patch_size,
    patchify,
    run_blocks,
    unpatchify,
)
from mimkit.models.pos_embed import sincos_2d


class MAE(Method):
    name = "mae"

    def __init__(
        self,
        encoder: nn.Module,
        decoder_dim: int,
        decoder_depth: int,
        decoder_heads: int,
        mlp_ratio: float,
        mask_generator: MaskGenerator,
        norm_pix: bool = True,
        norm_eps: float = 1e-6,
        seed: int = 0,
        fixed_masks: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.mask_generator = mask_generator
        self.norm_pix = norm_pix
        self.seed = seed
        self.fixed_masks = fixed_masks
        self.patch = patch_size(encoder)
        self.grid = grid_size(encoder)
        self.chans = in_chans(encoder)
        num_patches = self.grid[0] * self.grid[1]
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)

        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_dim, decoder_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch**2 * self.chans, bias=True)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's init: fixed sin-cos position tables, xavier linears, N(0, 0.02) tokens."""
        self.decoder_pos_embed.data.copy_(sincos_2d(self.decoder_pos_embed.shape[-1], self.grid[0]).unsqueeze(0))
        init_patch_embed_like_linear(self.encoder)
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in [
            *self.encoder.blocks,
            self.encoder.norm,
            self.decoder_embed,
            *self.decoder_blocks,
            self.decoder_norm,
            self.decoder_pred,
        ]:
            module.apply(init_mae_weights)

    # ------------------------------------------------------------------------------------------- named steps
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.patch, self.chans, self.grid[0], self.grid[1])

    def masking_indices(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the patches with the lowest noise. Returns the kept patch indices (B, L_keep), the mask (B, L;
        1 = removed) and ids_restore (B, L)."""
        b, length = noise.shape
        len_keep = length - self.mask_generator.num_masked
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones(b, length, device=noise.device)
        mask[:, :len_keep] = 0
        return ids_shuffle[:, :len_keep], torch.gather(mask, 1, ids_restore), ids_restore

    def random_masking(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the tokens with the lowest noise. Returns visible tokens, mask (1 = removed), ids_restore."""
        ids_keep, mask, ids_restore = self.masking_indices(noise)
        return gather_rows(x, ids_keep), mask, ids_restore

    def forward_encoder(
        self, imgs: torch.Tensor, noise: torch.Tensor, visible_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent (B, 1 + L_keep, D), mask, ids_restore. `visible_only` embeds the visible patches alone (the
        training fast path; `fast/visible_embed.py`) where the patch embedding allows it."""
        enc = self.encoder
        if visible_only and embeds_patches_alone(enc, imgs):
            ids_keep, mask, ids_restore = self.masking_indices(noise)
            x = embed_patches_at(enc, imgs, ids_keep) + enc.pos_embed[0, 1:, :][ids_keep]
        else:
            x = enc.patch_embed(imgs)
            x = x + enc.pos_embed[:, 1:, :]
            x, mask, ids_restore = self.random_masking(x, noise)
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = enc.norm_pre(x)
        x = run_blocks(enc, x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L, p*p*C) predictions for every patch, or (B, M, p*p*C) for the patch indices `rows` (B, M) only."""
        x = self.decoder_embed(latent)
        b, n_vis, dim = x.shape
        num_masked = ids_restore.shape[1] + 1 - n_vis
        mask_tokens = self.mask_token.expand(b, num_masked, -1)
        tokens = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        tokens = gather_rows(tokens, ids_restore)
        x = torch.cat([x[:, :1, :], tokens], dim=1) + self.decoder_pos_embed
        grad_checkpointing = getattr(self.encoder, "grad_checkpointing", False)
        if rows is not None:
            x = last_block_at_rows(self.decoder_blocks, x, rows + 1, grad_checkpointing)
            return self.decoder_pred(self.decoder_norm(x))
        x = checkpointed(self.decoder_blocks, x, grad_checkpointing)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    def target_patches(self, imgs: torch.Tensor) -> torch.Tensor:
        """What the decoder predicts: (B, L, p*p*C) patches, normalised per patch with `norm_pix` (the training
        fast path normalises only the masked ones, inside `patch_mse`)."""
        target = self.patchify(imgs)
        return norm_pix_target(target) if self.norm_pix else target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-patch MSE averaged over masked patches only."""
        per_patch = ((pred.float() - self.target_patches(imgs).float()) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def training_loss(self, imgs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """`forward_mim(imgs, noise).loss`, the loss `forward_loss` defines. With `fast_path`: the visible patches
        alone embedded, the decoder's tail at the masked patches only and the loss fused (fast/pixel_losses.py),
        which gives the same number; the plain code runs instead when a subclass replaces forward_loss or the
        target, or a hook on the decoder's norm or head expects every token."""
        if (
            not self.fast_path
            or self.overrides(MAE, "forward_loss", "target_patches", "patchify")
            or hooked(self.decoder_norm, self.decoder_pred)
        ):
            return self.forward_mim(imgs, noise).loss
        latent, mask, ids_restore = self.forward_encoder(imgs, noise, visible_only=True)
        rows = masked_rows(mask.bool(), self.mask_generator.num_masked)
        pred = self.forward_decoder(latent, ids_restore, rows)
        return patch_mse(pred, gather_rows(self.patchify(imgs), rows), self.norm_pix)

    def reconstruction_note(self, true_patch_stats: bool = False) -> str:
        if not self.norm_pix:
            return "raw-pixel targets"
        if true_patch_stats:
            return "masked patches de-normalised with their TRUE mean/std (leaks information)"
        return "masked patches de-normalised with the visible patches' mean/std"

    def forward_mim(self, imgs: torch.Tensor, noise: torch.Tensor | None = None) -> MIMOutput:
        """Model-level API (HF ViTMAE-like): optional `noise` (B, L) fixes the mask from outside."""
        if noise is None:
            noise = torch.rand(imgs.shape[0], self.grid[0] * self.grid[1], device=imgs.device)
        latent, mask, ids_restore = self.forward_encoder(imgs, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return MIMOutput(self.forward_loss(imgs, pred, mask), pred, mask.bool())

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        noise = self.mask_generator.noise(mask_keys(batch, self.fixed_masks), self.seed).to(batch["images"].device)
        return {"loss": self.training_loss(batch["images"], noise)}

    @torch.no_grad()
    def reconstruct(
        self, imgs: torch.Tensor, ids: torch.Tensor, epoch: int = -1, true_patch_stats: bool = False
    ) -> dict[str, torch.Tensor]:
        """Masked input and reconstruction in the normalised image space, visible patches pasted back. Normalised-
        pixel predictions are de-normalised with what the model could know: the mean and the within-patch variance
        averaged over the image's visible patches. `true_patch_stats` uses each masked patch's own mean and std
        instead (the official demo's shortcut), which shows the image's local brightness and contrast the model
        never saw."""
        noise = self.mask_generator.noise(sample_keys(ids, epoch), self.seed).to(imgs.device)
        out = self.forward_mim(imgs, noise)
        pred = out.pred.float()
        if self.norm_pix:
            mean, var = patch_mean_var(self.patchify(imgs).float())  # (B, L, 1) each
            if not true_patch_stats:
                visible = (~out.mask).unsqueeze(-1).float()
                count = visible.sum(1, keepdim=True)
                mean = (mean * visible).sum(1, keepdim=True) / count
                var = (var * visible).sum(1, keepdim=True) / count
            pred = pred * (var + 1e-6) ** 0.5 + mean
        return paste_visible(imgs, self.unpatchify(pred), out.mask, self.patch, self.grid)


def build_mae(cfg: Any, encoder: nn.Module, mask_generator: MaskGenerator) -> MAE:
    m = cfg.model
    return MAE(
        encoder,
        m.decoder_dim,
        m.decoder_depth,
        m.decoder_heads,
        m.mlp_ratio,
        mask_generator,
        norm_pix=cfg.method.norm_pix,
        norm_eps=m.norm_eps,
        seed=cfg.seed,
        fixed_masks=cfg.method.fixed_masks,
    )
