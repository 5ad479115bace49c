"""The `model:` config section: its keys, their checks and the architecture they resolve to (models/presets.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mimkit.errors import check, one_of

DROP_PATH_RULES = ("linear", "constant_but_last")
FAMILIES = ("vit", "beit")
ARCH_KEYS = (
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "decoder_dim",
    "decoder_depth",
    "decoder_heads",
    "window_size",
)


@dataclass
class ModelConfig:
    name: str = "mim_vit_tiny"  # a mimkit preset (see `mimkit models`) or any timm vit_* name
    # vit: timm's VisionTransformer (learned absolute position embedding); beit: the ViT SimMIM published, timm's
    # BEiT model with a relative position bias shared by all blocks, layer scale 0.1, q and v biases only, no
    # absolute position embedding, BEiT's initialisation. Same sizes either way. Read for ViT names only: a
    # SwinV2 name builds a SwinV2 (so a SimMIM recipe on beit runs with --set model.name=mim_swinv2_pico too)
    family: str = "vit"
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    drop_path: float = 0.0
    # how drop_path spreads over the blocks: linear (timm, DeiT: 0 in the first block rising to drop_path in the
    # last) | constant_but_last (TinyMIM's students: drop_path in every block but the last, none in the last)
    drop_path_rule: str = "linear"
    norm_eps: float = 1e-6
    # how a random encoder starts (weights from `init` replace it): timm (truncated normal 0.02, learned position
    # embedding from the same) | mae (MAE's: xavier-uniform linears and patch projection, a 2-D sin-cos position
    # embedding left trainable, N(0, 0.02) class token), so a scratch baseline differs from MAE's encoders by
    # their pretraining only
    init_scheme: str = "timm"
    num_classes: int | None = None  # classification (supervised / finetune); None: from the data set
    global_pool: str = "avg"  # classification head input: avg (global average pooling + fc_norm, MAE) | token
    freeze: bool = False  # task heads: train a linear head on the frozen encoder (eval mode, no gradients)
    decoder_dim: int | None = None  # MAE decoder; None: preset default (512 for ImageNet-size models)
    decoder_depth: int | None = None
    decoder_heads: int | None = None
    # SwinV2 (model.name swinv2_* or mim_swinv2_*): per-stage depths and heads, window size; None: preset/timm
    stage_depths: list[int] | None = None
    stage_heads: list[int] | None = None
    window_size: int | None = None
    # SwinV2 fine-tuned at another size: each stage's window during pretraining (filled in from `init` with
    # data.resize_init), which scales its relative coordinates as the official fine-tuning does
    pretrained_window_sizes: list[int] | None = None


def validate_model(cfg: Any) -> Any:
    """The section's own checks and those against the image size; returns the resolved preset (ModelSpec)."""
    from mimkit.models.presets import resolve_model_spec  # late import: keeps `mimkit --help` fast

    m, d = cfg.model, cfg.data
    one_of("model.global_pool", m.global_pool, ["avg", "token"])
    one_of("model.family", m.family, list(FAMILIES))
    one_of("model.init_scheme", m.init_scheme, ["timm", "mae"])
    check(m.num_classes is None or m.num_classes > 1, f"model.num_classes: {m.num_classes} must be >= 2")
    spec = resolve_model_spec(m, d.img_size)  # raises ConfigError for unknown names
    check(
        d.img_size % spec.patch_size == 0,
        f"data.img_size: {d.img_size} is not divisible by the patch size {spec.patch_size} "
        f"(set data.img_size to a multiple of {spec.patch_size}, or model.patch_size)",
    )
    check(
        spec.embed_dim % spec.num_heads == 0,
        f"model.num_heads: {spec.num_heads} does not divide model.embed_dim {spec.embed_dim}",
    )
    check(0.0 <= m.drop_path < 1.0, f"model.drop_path: {m.drop_path} must be in [0, 1)")
    one_of("model.drop_path_rule", m.drop_path_rule, list(DROP_PATH_RULES))
    if m.pretrained_window_sizes is not None:
        check(
            spec.is_swin and len(m.pretrained_window_sizes) == len(spec.stage_depths),
            f"model.pretrained_window_sizes: {m.pretrained_window_sizes} is for a SwinV2, one window per stage",
        )
    check(
        m.drop_path_rule == "linear" or not spec.is_swin,
        f"model.drop_path_rule={m.drop_path_rule} is for ViTs; a SwinV2 ('{m.name}') uses the linear rule",
    )
    check(0 < m.norm_eps < 1, f"model.norm_eps: {m.norm_eps} must be in (0, 1) (LayerNorm's epsilon, e.g. 1e-6)")
    return spec


def resolve_model(cfg: Any) -> None:
    """The preset's architecture written into every unset key, in place on a resolved copy, so the saved config
    says what ran."""
    from mimkit.models.presets import resolve_model_spec

    m, d = cfg.model, cfg.data
    if m.num_classes is None and d.name in ("fashion-mnist", "synthetic"):
        m.num_classes = 10
    spec = resolve_model_spec(m, d.img_size)
    for key in ARCH_KEYS:
        if getattr(m, key) is None:
            setattr(m, key, getattr(spec, key))
    if spec.is_swin:
        m.stage_depths, m.stage_heads = list(spec.stage_depths), list(spec.stage_heads)
