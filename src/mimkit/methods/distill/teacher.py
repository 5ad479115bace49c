"""The teacher of a distillation run: resolved from any weights source, checked against the student, and loaded
frozen. Its architecture is written into `distill.teacher_*` so the run's config says exactly what it learned from
(and the run reloads without the teacher)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mimkit.config import Config, ConfigError, load_config, resolved
from mimkit.eval.features import frozen_encoder
from mimkit.methods.distill.model import relation_heads
from mimkit.methods.distill.vit_blocks import block_index
from mimkit.methods.registry import method_spec
from mimkit.weights import Source, adopt_source, resolve_source


def distilled_relation_heads(source: Source, spec: str, teacher_index: int) -> int | None:
    """A teacher that is itself a TinyMIM student (sequential distillation) had its distilled block trained with
    another head count (the reshape_student scheme): its relations must be read with that count (the official code
    misses this for ViT-T from TinyMIM-S)."""
    if source.kind != "run":
        return None
    path = Path(spec)
    config = path / "config.yaml" if (path / "config.yaml").is_file() else path.parent.parent / "config.yaml"
    if not config.is_file():
        return None
    old = resolved(load_config(str(config)))
    dis = old.distill
    if not method_spec(old).needs_teacher or dis.head_match != "reshape_student" or dis.relation_heads is None:
        return None
    student_index = block_index(dis.student_layer, old.model.depth, "distill.student_layer")
    return dis.relation_heads if student_index == teacher_index else None


def prepare_teacher(cfg: Config) -> tuple[Config, Source]:
    """Resolve `distill.teacher`, check that it reads the student's images into the same tokens, and record its
    architecture and the relation head counts in `cfg.distill`."""
    dis = cfg.distill
    if dis.teacher is None:
        raise ConfigError("distill.teacher: distillation needs a teacher (mimkit distill --teacher SOURCE)")
    spec = str(dis.teacher)
    if not spec.startswith("timm:") and not Path(spec).exists():
        raise ConfigError(
            f"distill.teacher: '{spec}' does not exist; give a run directory or checkpoint folder, "
            "an exported .safetensors file or timm:NAME[@FILE]"
        )
    source = resolve_source(spec, cfg)
    if source.kind == "scratch":
        raise ConfigError(
            "distill.teacher: a random network teaches nothing; give a run directory, an exported "
            ".safetensors or timm:NAME"
        )
    if source.arch.get("stage_depths"):
        raise ConfigError(f"distill.teacher: '{spec}' is a SwinV2; relation distillation reads ViT blocks")
    arch, data = source.arch, source.data
    d, m = cfg.data, cfg.model
    t_img = data.get("img_size", d.img_size)
    if t_img != d.img_size or arch["patch_size"] != m.patch_size:
        raise ConfigError(
            f"distill: teacher and student must read the same images into the same tokens, but the "
            f"teacher takes {t_img} px with patch {arch['patch_size']} and the student "
            f"{d.img_size} px with patch {m.patch_size}; set data.img_size / model.patch_size to match"
        )
    if data.get("in_chans", d.in_chans) != d.in_chans:
        raise ConfigError(
            f"distill: the teacher takes {data['in_chans']} channels and the student "
            f"{d.in_chans}; set data.in_chans to match"
        )
    t_index = block_index(dis.teacher_layer, arch["depth"], "distill.teacher_layer")
    block_index(dis.student_layer, m.depth, "distill.student_layer")
    # a distilled run says itself; otherwise (e.g. an exported distilled student) a user-set value is kept
    t_rel = distilled_relation_heads(source, dis.teacher, t_index) or dis.teacher_relation_heads or arch["num_heads"]
    rel = relation_heads(dis.head_match, m.embed_dim, m.num_heads, arch["embed_dim"], t_rel)
    dis = dataclasses.replace(
        dis,
        teacher_embed_dim=arch["embed_dim"],
        teacher_num_heads=arch["num_heads"],
        teacher_depth=arch["depth"],
        teacher_relation_heads=t_rel,
        relation_heads=rel,
    )
    return dataclasses.replace(cfg, distill=dis), source


def load_teacher(cfg: Config, source: Source, device: torch.device) -> nn.Module:
    """The teacher encoder, frozen and in eval mode, with its own architecture."""
    teacher_cfg = adopt_source(cfg, source)
    return frozen_encoder(teacher_cfg, source, device, what=f"distill.teacher '{cfg.distill.teacher}'")


def attach_teacher(method: Any, cfg: Config, source: Source, log: Callable = print) -> None:
    """Load the teacher on the CPU (the Engine moves the method) and give it to the distillation method."""
    method.attach_teacher(load_teacher(cfg, source, torch.device("cpu")))
    dis = cfg.distill
    log(
        f"[distill] teacher {source.description}: {dis.teacher_depth} blocks x {dis.teacher_num_heads} heads, width "
        f"{dis.teacher_embed_dim}; layer {method.t_index + 1} -> student layer {method.s_index + 1}; targets "
        f"{dis.targets}; relations with {dis.relation_heads} heads ({dis.head_match})"
    )
