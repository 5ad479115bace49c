"""Geometric task heads (localisation, rotation, combined): the model and its registry entry."""

from mimkit.methods.task.model import TaskModel, build_task
from mimkit.methods.task.spec import SPEC

__all__ = ["SPEC", "TaskModel", "build_task"]
