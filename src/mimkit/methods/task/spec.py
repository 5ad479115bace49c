"""The geometric tasks' registry entry (localisation plain and cluttered, keypoints, rotation, combined plain and
cluttered, depth, tracking): heads on a pretrained or fresh encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimkit.errors import check
from mimkit.lazy import deferred
from mimkit.methods.spec import MethodSpec

if TYPE_CHECKING:
    from mimkit.methods.task.model import TaskModel


def build(cfg: Any) -> TaskModel:
    from mimkit.methods.task.model import build_task
    from mimkit.models.encoder import create_encoder

    return build_task(cfg, create_encoder(cfg, fixed_sincos=False, global_pool=cfg.model.global_pool))


def validate(cfg: Any, model: Any) -> None:
    check(
        cfg.data.task != "classification",
        "method.name=task trains the geometric heads: set data.task to localization, cluttered_localization, "
        "cluttered_combined, keypoints, rotation, combined, depth or tracking (classification is "
        "method.name=supervised)",
    )


SPEC = MethodSpec(
    name="task",
    summary="geometric task heads: box (localization), angle (rotation), class + box (combined), dense per-patch "
    "heads (cluttered_localization, cluttered_combined, keypoints, depth), a correlation head between two frames "
    "(tracking)",
    loss_label="task head loss",
    eval_inputs="fixed draws",
    build=build,
    validate=validate,
    evaluators=deferred("mimkit.eval.task_eval", "task_evaluators"),
)
