"""Sequential distillation (TinyMIM's B -> S -> T): each stage's student becomes the next stage's teacher.

Stages live in OUT/stage1-NAME, OUT/stage2-NAME, ...; a stage with results.json is finished and skipped, an
interrupted one resumes from its checkpoint, so re-running the same command continues the chain where it stopped.
OUT/chain.json records every stage (student, teacher, directory, status, final held-out loss).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from mimkit.config import Config, ConfigError
from mimkit.engine.atomic import atomic_write_text
from mimkit.models.options import ARCH_KEYS

RESOLVED_FROM_TEACHER = (
    "teacher_embed_dim",
    "teacher_num_heads",
    "teacher_depth",
    "relation_heads",
    "teacher_relation_heads",
)


def stage_dir(out: Path, index: int, student: str) -> Path:
    return out / f"stage{index + 1}-{student}"


def stage_config(cfg: Config, index: int, student: str, teacher: str) -> Config:
    """The base config with this stage's student (sizes from its name) and teacher. `distill.teacher_layer`
    applies to the first teacher only; later teachers are distilled students, read at the block they were
    distilled at (`distill.student_layer`, the last by default), the only one whose relations they learned."""
    model = dataclasses.replace(cfg.model, name=student, **{k: None for k in ARCH_KEYS})  # sizes from the name
    dis = dataclasses.replace(
        cfg.distill,
        teacher=teacher,
        chain=None,
        teacher_layer=cfg.distill.teacher_layer if index == 0 else cfg.distill.student_layer,
        **{k: None for k in RESOLVED_FROM_TEACHER},
    )
    return dataclasses.replace(cfg, model=model, distill=dis)


def check_finished_stage(run_dir: Path, planned: Config) -> None:
    """A finished stage is reused only if it was trained as planned (same student, method and distillation
    settings, teacher included); otherwise the user is told instead of silently getting the old stage."""
    from mimkit.config import load_config, resolved

    old = resolved(load_config(str(run_dir / "config.yaml")))
    new = resolved(planned)
    keys = (
        "teacher",
        "targets",
        "teacher_layer",
        "student_layer",
        "head_match",
        "cls_loss",
        "feature_loss",
        "mask_ratio",
        "mim_weight",
        "color_jitter",
    )
    differs = [f"distill.{k}" for k in keys if getattr(old.distill, k) != getattr(new.distill, k)]
    differs += ["model.name"] if old.model.name != new.model.name else []
    differs += ["method"] if old.method != new.method else []
    if differs:
        raise ConfigError(
            f"distill chain: '{run_dir}' is finished but was trained with other settings "
            f"({', '.join(differs)}); use a new --out directory or remove that stage"
        )


def run_chain(cfg: Config, students: list[str], out: str | Path, log: Callable = print) -> list[dict[str, Any]]:
    from mimkit.training import pretrain

    if not students:
        raise ConfigError("distill chain: list at least one student (--chain NAME,NAME,...)")
    if cfg.distill.teacher is None:
        raise ConfigError("distill chain: the first stage needs a teacher (--teacher SOURCE)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = cfg.distill.teacher
    stages: list[dict[str, Any]] = []
    for index, student in enumerate(students):
        run_dir = stage_dir(out, index, student)
        record = {"stage": index + 1, "student": student, "teacher": str(teacher), "run_dir": str(run_dir)}
        finished = run_dir / "results.json"
        if finished.is_file():
            check_finished_stage(run_dir, stage_config(cfg, index, student, str(teacher)))
            log(f"[chain] stage {index + 1}/{len(students)} ({student}) is finished; skipping")
            results = json.loads(finished.read_text())
            record["status"] = "skipped (finished before)"
        else:
            log(f"[chain] stage {index + 1}/{len(students)}: {teacher} -> {student} in {run_dir}")
            results = pretrain(stage_config(cfg, index, student, str(teacher)), run_dir)
            record["status"] = "trained"
        record["final_heldout_loss"] = results.get("final_heldout_loss")
        stages.append(record)
        atomic_write_text(out / "chain.json", json.dumps({"stages": stages, "planned": students}, indent=1))
        teacher = run_dir
    return stages
