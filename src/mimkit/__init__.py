"""mimkit: masked image modeling research toolkit (SimMIM and MAE pretraining, analysis, distillation).

The Python API: `load` a trained run, `transforms_for` its preprocessing, and `pretrain` / `finetune` from code
(the same training as the CLI's commands, returning their results). Imports are lazy: `import mimkit` is cheap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a trained Method (MAE or SimMIM module) from a run directory or checkpoint folder."""
    from mimkit.api import load as _load

    return _load(path, device)


def transforms_for(model_or_run: Any) -> Any:
    """timm's eval transform for PIL images, as the model was trained (see mimkit.api.transforms_for)."""
    from mimkit.api import transforms_for as _transforms_for

    return _transforms_for(model_or_run)


def _config(config: Any, overrides: list[str] | None, steps: int | None, epochs: float | None) -> Any:
    from mimkit.config import Config, load_config
    from mimkit.config.length import with_length

    if isinstance(config, Config):
        if overrides:
            raise TypeError("overrides apply to a recipe name or YAML path; change a Config with dataclasses.replace")
        cfg = config
    else:
        cfg = load_config(str(config), list(overrides or []))
    return with_length(cfg, steps, epochs)[0]


def pretrain(
    config: Any,
    out: str | Path,
    overrides: list[str] | None = None,
    steps: int | None = None,
    epochs: float | None = None,
) -> dict[str, Any]:
    """Train as `mimkit pretrain --config CONFIG --out OUT [--set ...] [--steps N | --epochs N]` does (any method
    of the registry: MAE, SimMIM, MoCo v3, supervised, distill, task) and return its results (also in
    OUT/results.json). `config`: a recipe name, a YAML path, a run directory or a Config; re-running resumes."""
    from mimkit.training import pretrain as _pretrain

    return _pretrain(_config(config, overrides, steps, epochs), out)


def finetune(
    init: str | Path,
    out: str | Path,
    config: Any = "finetune_fmnist_tiny",
    overrides: list[str] | None = None,
    steps: int | None = None,
    epochs: float | None = None,
) -> dict[str, Any]:
    """Fine-tune as `mimkit finetune --init INIT --out OUT` does: supervised training from INIT's weights (a run,
    a checkpoint, an exported .safetensors, timm:NAME or scratch)."""
    sets = [f"init={init}", "method.name=supervised", *(overrides or [])]
    return pretrain(config, out, sets, steps, epochs)


__all__ = ["load", "transforms_for", "pretrain", "finetune", "__version__"]
