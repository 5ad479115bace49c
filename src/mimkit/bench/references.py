"""What `mimkit bench` measures mimkit against, built to the same shape as a mimkit config: the HuggingFace
models (ViTMAEForPreTraining, ViTForMaskedImageModeling, ViTForImageClassification) and plain timm code written
the way the papers' official repositories are (visible-only MAE encoder, SimMIM mask token + linear head, a
classifier with cross-entropy, relation distillation from a frozen teacher). Each builder returns the module and a
`loss(module, images, labels)` callable (the module passed in may be a torch.compile wrapper of `model`); the bench
times forward, backward and a fused AdamW step around it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.compat import vit_pos_embed
from mimkit.config import Config
from mimkit.models.encoder import patchify

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Reference:
    model: nn.Module
    loss: LossFn


def _hf_build(cls: type, hf_cfg) -> nn.Module:
    """HF model with its SDPA attention where the installed transformers offers it (its fastest eager path)."""
    try:
        return cls._from_config(hf_cfg, attn_implementation="sdpa")
    except (TypeError, ValueError):
        return cls(hf_cfg)


def _hf_vit_kwargs(cfg: Config) -> dict:
    m, d = cfg.model, cfg.data
    return dict(
        hidden_size=m.embed_dim,
        num_hidden_layers=m.depth,
        num_attention_heads=m.num_heads,
        intermediate_size=int(m.embed_dim * m.mlp_ratio),
        image_size=d.img_size,
        patch_size=m.patch_size,
        num_channels=d.in_chans,
        layer_norm_eps=m.norm_eps,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def hf_mae(cfg: Config) -> Reference:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    m = cfg.model
    hf_cfg = ViTMAEConfig(
        **_hf_vit_kwargs(cfg),
        decoder_hidden_size=m.decoder_dim,
        decoder_num_hidden_layers=m.decoder_depth,
        decoder_num_attention_heads=m.decoder_heads,
        decoder_intermediate_size=int(m.decoder_dim * m.mlp_ratio),
        mask_ratio=cfg.method.mask_ratio,
        norm_pix_loss=cfg.method.norm_pix,
    )
    model = _hf_build(ViTMAEForPreTraining, hf_cfg)
    return Reference(model, lambda m, images, labels: m(pixel_values=images).loss)


def hf_simmim(cfg: Config) -> Reference:
    """ViTForMaskedImageModeling: HF's SimMIM (mask token + conv/pixel-shuffle head, L1 on masked pixels). The
    boolean patch mask is drawn on the device each step, SimMIM's way (masked cells of mask_patch_size)."""
    from transformers import ViTConfig, ViTForMaskedImageModeling

    model = _hf_build(ViTForMaskedImageModeling, ViTConfig(**_hf_vit_kwargs(cfg), encoder_stride=cfg.model.patch_size))
    cells, scale, masked = _simmim_cells(cfg)

    def loss(m: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return m(pixel_values=images, bool_masked_pos=_random_cell_mask(images, cells, scale, masked).flatten(1)).loss

    return Reference(model, loss)


def hf_classifier(cfg: Config) -> Reference:
    from transformers import ViTConfig, ViTForImageClassification

    model = _hf_build(ViTForImageClassification, ViTConfig(**_hf_vit_kwargs(cfg), num_labels=cfg.model.num_classes))
    return Reference(model, lambda m, images, labels: m(pixel_values=images, labels=labels).loss)


# ------------------------------------------------------------------------------------------- plain timm code
def _timm_vit(cfg: Config, num_classes: int = 0, **extra) -> nn.Module:
    m, d = cfg.model, cfg.data
    return timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=d.img_size,
        patch_size=m.patch_size,
        in_chans=d.in_chans,
        embed_dim=m.embed_dim,
        depth=m.depth,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        num_classes=num_classes,
        norm_layer=partial(nn.LayerNorm, eps=m.norm_eps),
        **extra,
    )


class OfficialStyleMAE(nn.Module):
    """MAE as the paper's code is organised: timm patch embedding and Blocks, per-sample random masking by
    argsort of uniform noise, encoder on visible tokens only, decoder over mask tokens, normalised-pixel MSE."""

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.vit = _timm_vit(cfg)
        self.mask_ratio, self.norm_pix, self.patch = cfg.method.mask_ratio, cfg.method.norm_pix, m.patch_size
        norm = partial(nn.LayerNorm, eps=m.norm_eps)
        length = self.vit.patch_embed.num_patches
        self.decoder_embed = nn.Linear(m.embed_dim, m.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, m.decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, length + 1, m.decoder_dim), requires_grad=False)
        self.decoder = nn.Sequential(
            *[
                Block(m.decoder_dim, m.decoder_heads, m.mlp_ratio, qkv_bias=True, norm_layer=norm)
                for _ in range(m.decoder_depth)
            ]
        )
        self.decoder_norm = norm(m.decoder_dim)
        self.decoder_pred = nn.Linear(m.decoder_dim, m.patch_size**2 * cfg.data.in_chans)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = self.vit
        x = v.patch_embed(images) + v.pos_embed[:, 1:]
        b, length, dim = x.shape
        keep = int(length * (1 - self.mask_ratio))
        shuffle = torch.argsort(torch.rand(b, length, device=x.device), dim=1)
        restore = torch.argsort(shuffle, dim=1)
        x = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, dim))
        cls = (v.cls_token + v.pos_embed[:, :1]).expand(b, -1, -1)
        x = v.norm(v.blocks(torch.cat([cls, x], dim=1)))
        x = self.decoder_embed(x)
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, length - keep, -1)], dim=1)
        tokens = torch.gather(tokens, 1, restore[:, :, None].expand(-1, -1, x.shape[-1]))
        x = self.decoder(torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        target = patchify(images, self.patch)
        if self.norm_pix:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        mask = torch.ones(b, length, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        per_patch = ((pred.float() - target.float()) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()


class OfficialStyleSimMIM(nn.Module):
    """SimMIM's ViT path: mask token in place of masked patch embeddings, a 1x1 conv + pixel shuffle head, L1 on
    masked pixels."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.vit = _timm_vit(cfg)
        self.patch, self.cells = cfg.model.patch_size, _simmim_cells(cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.model.embed_dim))
        self.head = nn.Sequential(
            nn.Conv2d(cfg.model.embed_dim, self.patch**2 * cfg.data.in_chans, 1), nn.PixelShuffle(self.patch)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = self.vit
        mask = _random_cell_mask(images, *self.cells)
        x = v.patch_embed(images)
        w = mask.flatten(1).unsqueeze(-1).to(x.dtype)
        x = vit_pos_embed(v, x * (1 - w) + self.mask_token.to(x.dtype) * w)
        x = v.norm(v.blocks(x))[:, v.num_prefix_tokens :]
        b, length, dim = x.shape
        side = int(length**0.5)
        rec = self.head(x.transpose(1, 2).reshape(b, dim, side, side))
        pixel_mask = mask.repeat_interleave(self.patch, 1).repeat_interleave(self.patch, 2).unsqueeze(1)
        l1 = (rec.float() - images.float()).abs() * pixel_mask
        return l1.sum() / (pixel_mask.sum() + 1e-5) / images.shape[1]


def official_mae(cfg: Config) -> Reference:
    model = OfficialStyleMAE(cfg)
    return Reference(model, lambda m, images, labels: m(images))


def official_simmim(cfg: Config) -> Reference:
    model = OfficialStyleSimMIM(cfg)
    return Reference(model, lambda m, images, labels: m(images))


def timm_classifier(cfg: Config) -> Reference:
    """The DeiT/MAE fine-tuning step without extras: timm ViT (average pool + fc_norm) and label-smoothed CE."""
    model = _timm_vit(cfg, num_classes=cfg.model.num_classes, global_pool="avg")
    smoothing = cfg.method.label_smoothing
    return Reference(
        model, lambda m, images, labels: F.cross_entropy(m(images).float(), labels, label_smoothing=smoothing)
    )


class PlainRelationDistill(nn.Module):
    """TinyMIM's qk+vv target written plainly: the frozen teacher's last-block q, k, v (read with a forward hook)
    and the student's, softmax relations per head, KL from teacher to student."""

    def __init__(self, student: nn.Module, teacher: nn.Module, heads: int):
        super().__init__()
        self.student, self.heads = student, heads
        object.__setattr__(self, "teacher", teacher)  # not a parameter owner of this module: frozen
        self._qkv: dict[str, torch.Tensor] = {}
        self._hooks = [
            vit.blocks[-1].attn.qkv.register_forward_hook(partial(self._keep, name))
            for name, vit in (("s", student), ("t", teacher))
        ]

    def close(self) -> None:
        """Remove the hooks: the teacher is shared with other bench rows."""
        for hook in self._hooks:
            hook.remove()

    def _keep(self, name: str, module: nn.Module, args, output: torch.Tensor) -> None:
        self._qkv[name] = output

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def _relations(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, three_dim = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, self.heads, three_dim // (3 * self.heads)).permute(2, 0, 3, 1, 4)
        scale = q.shape[-1] ** -0.5
        return (
            F.log_softmax((q @ k.transpose(-2, -1)).float() * scale, dim=-1),
            F.log_softmax((v @ v.transpose(-2, -1)).float() * scale, dim=-1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.teacher.forward_features(images)
            t_qk, t_vv = self._relations(self._qkv["t"])
        self.student.forward_features(images)
        s_qk, s_vv = self._relations(self._qkv["s"])
        kl = partial(F.kl_div, reduction="batchmean", log_target=True)
        return kl(s_qk.flatten(0, 1), t_qk.flatten(0, 1)) + kl(s_vv.flatten(0, 1), t_vv.flatten(0, 1))


def plain_distill(cfg: Config, teacher: nn.Module) -> Reference:
    model = PlainRelationDistill(_timm_vit(cfg), teacher, cfg.distill.relation_heads)
    return Reference(model, lambda m, images, labels: m(images))


# ------------------------------------------------------------------------------------------------- helpers
def _simmim_cells(cfg: Config) -> tuple[int, int, int]:
    """(cells per side, tokens per cell side, masked cells) of SimMIM's mask for this config."""
    cells = cfg.data.img_size // cfg.method.mask_patch_size
    return cells, cfg.method.mask_patch_size // cfg.model.patch_size, round(cells**2 * cfg.method.mask_ratio)


def _random_cell_mask(images: torch.Tensor, cells: int, scale: int, masked: int) -> torch.Tensor:
    """(B, side, side) bool token mask: `masked` random cells of scale x scale tokens per sample."""
    b = images.shape[0]
    order = torch.argsort(torch.rand(b, cells * cells, device=images.device), dim=1)
    cell_mask = torch.zeros(b, cells * cells, dtype=torch.bool, device=images.device)
    cell_mask.scatter_(1, order[:, :masked], True)
    cell_mask = cell_mask.view(b, cells, cells)
    return cell_mask.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
