"""TinyMIM distillation's own config section, `distill:` (method.name=distill), its validation and the parsing of
`distill.targets` (torch-free: the config reads it before torch is imported)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mimkit.errors import ConfigError, check, one_of
from mimkit.methods.spec import check_mask_counts

TARGETS = ("cls", "feature", "qk", "vv")


def parse_targets(text: str) -> dict[str, float]:
    """'qk+vv' -> {'qk': 1.0, 'vv': 1.0}; 'qk:1+vv:0.5+cls:2' gives weights. Unknown names and non-positive
    weights are config errors."""
    out: dict[str, float] = {}
    for part in [p.strip() for p in str(text).split("+") if p.strip()]:
        name, _, weight = part.partition(":")
        if name not in TARGETS:
            raise ConfigError(
                f"distill.targets: unknown target '{name}' in '{text}'; choose from "
                f"{', '.join(TARGETS)}, joined with '+' (e.g. qk+vv or cls:1+feature:0.5)"
            )
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"distill.targets: weight '{weight}' of '{name}' is not a number") from None
        if not value > 0:
            raise ConfigError(f"distill.targets: weight of '{name}' must be > 0, got {value}")
        if name in out:
            raise ConfigError(f"distill.targets: '{name}' is listed twice in '{text}'")
        out[name] = value
    if not out:
        raise ConfigError("distill.targets is empty: use e.g. qk+vv")
    return out


@dataclass
class DistillConfig:
    """TinyMIM distillation (method.name=distill): model.* is the student, `teacher` the frozen encoder."""

    teacher: str | None = None  # run dir / checkpoint (any method), exported .safetensors, timm:NAME[@FILE]
    targets: str = "qk+vv"  # '+'-joined cls, feature, qk, vv, each optionally NAME:WEIGHT (qk:1+vv:0.5)
    teacher_layer: int | None = None  # 1-based block (18 of 24 for ViT-L), negative from the end; None: last
    student_layer: int | None = None  # None: last
    head_match: str = "reshape_student"  # reshape_student (TinyMIM) | resplit_teacher
    cls_loss: str = "smooth_l1"  # smooth_l1 | mse | cosine
    feature_loss: str = "smooth_l1"  # smooth_l1 | mse | cosine
    # the feature target whitened by a LayerNorm without affine parameters (Feature Distillation, which TinyMIM's
    # feature target follows); false regresses the teacher's raw tokens
    feature_norm: bool = True
    mask_ratio: float = 0.0  # > 0: the student sees masked input (mask tokens; method.mask_type cells)
    mim_weight: float = 0.0  # > 0: auxiliary SimMIM pixel loss on the student's masked patches
    color_jitter: float = 0.4  # brightness/contrast/saturation strength, on the student's view only
    chain: list[str] | None = None  # sequential distillation: student model names in order (mimkit distill --chain)
    # Filled in from the teacher when the run starts (recorded so the run reloads without the teacher):
    teacher_embed_dim: int | None = None
    teacher_num_heads: int | None = None
    teacher_depth: int | None = None
    relation_heads: int | None = None  # the head count both relations are computed with
    teacher_relation_heads: int | None = None  # how the teacher's block is split (a distilled teacher's own count)


def check_section(cfg: Any) -> None:
    """The `distill:` section's own ranges, whatever the method: every config carries the section and saves it."""
    dis = cfg.distill
    parse_targets(dis.targets)
    one_of("distill.head_match", dis.head_match, ["reshape_student", "resplit_teacher"])
    one_of("distill.cls_loss", dis.cls_loss, ["smooth_l1", "mse", "cosine"])
    one_of("distill.feature_loss", dis.feature_loss, ["smooth_l1", "mse", "cosine"])
    check(0.0 <= dis.mask_ratio < 1.0, f"distill.mask_ratio: {dis.mask_ratio} must be in [0, 1)")
    check(dis.mim_weight >= 0, f"distill.mim_weight: {dis.mim_weight} must be >= 0")
    check(
        dis.mim_weight == 0 or dis.mask_ratio > 0,
        "distill.mim_weight > 0 needs masked student input: set distill.mask_ratio (e.g. 0.6)",
    )
    check(dis.color_jitter >= 0, f"distill.color_jitter: {dis.color_jitter} must be >= 0")
    for key in ("teacher_layer", "student_layer"):
        check(getattr(dis, key) != 0, f"distill.{key}: layers count from 1 (or -1 from the end); 0 is not a layer")
    for key in ("teacher_embed_dim", "teacher_num_heads", "teacher_depth", "relation_heads", "teacher_relation_heads"):
        value = getattr(dis, key)
        check(value is None or value > 0, f"distill.{key}: {value} must be positive or null")


def validate(cfg: Any, model: Any) -> None:
    """The `distill:` section of a distillation run; `model` is the student's resolved preset (models.presets)."""
    dis = cfg.distill
    check_section(cfg)
    if dis.mask_ratio > 0:  # only a masked-input distillation masks anything
        check_mask_counts(cfg, model.patch_size, dis.mask_ratio, cfg.method.mask_type or "simmim", "distill.mask_ratio")
