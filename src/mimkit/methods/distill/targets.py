"""What the student learns from the teacher: `distill.targets` parsing and the CLS / feature losses."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the loss, not by the config's parsing of distill.targets
    import torch

TARGETS = ("cls", "feature", "qk", "vv")


def parse_targets(text: str) -> dict[str, float]:
    """'qk+vv' -> {'qk': 1.0, 'vv': 1.0}; 'qk:1+vv:0.5+cls:2' gives weights. Unknown names and non-positive
    weights are config errors."""
    from mimkit.errors import ConfigError

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


def regression_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """smooth_l1 | mse (mean over elements) or cosine (1 - cosine similarity, mean over vectors)."""
    import torch.nn.functional as F

    student, teacher = student.float(), teacher.detach().float()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(student, teacher)
    if kind == "mse":
        return F.mse_loss(student, teacher)
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
