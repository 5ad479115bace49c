"""The CLS / feature losses between student and teacher (`distill.targets` is parsed in options.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def regression_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """smooth_l1 | mse (mean over elements) or cosine (1 - cosine similarity, mean over vectors)."""
    student, teacher = student.float(), teacher.detach().float()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(student, teacher)
    if kind == "mse":
        return F.mse_loss(student, teacher)
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
