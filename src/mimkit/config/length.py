"""`--steps N` / `--epochs N`: change a run's length with one flag. The recipe's warm-up is kept when it fits in half
of the new length, and otherwise kept as the same fraction of the run (with a note); evaluation and checkpoint
intervals keep their count, so a short run still evaluates and saves, and a long one does not evaluate ten times
more often. Without this, shortening a run took two or three overrides that had to agree with each other."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mimkit.config.checks import validate
from mimkit.errors import ConfigError


def with_length(
    cfg: Any, steps: int | None = None, epochs: float | None = None, probe: bool = False
) -> tuple[Any, list[str]]:
    """The config with its training length set to `steps` or `epochs` (at most one), and the notes to print. With
    `probe`, the length is the linear probe's (`probe.epochs`, which counts epochs only)."""
    if steps is None and epochs is None:
        return cfg, []
    if steps is not None and epochs is not None:
        raise ConfigError("--steps and --epochs: give one of them, not both")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"--steps: {steps} must be a positive whole number")
    if epochs is not None and not (0 < epochs <= 1e6):
        raise ConfigError(f"--epochs: {epochs} must be in (0, 1e6]")
    if probe:
        if steps is not None:
            raise ConfigError("--steps: the linear probe counts its length in epochs (probe.epochs); use --epochs")
        cfg, notes = _probe_epochs(cfg, epochs)
    elif steps is not None:
        cfg, notes = _train_steps(cfg, steps)
    else:
        cfg, notes = _train_epochs(cfg, epochs)
    validate(cfg)
    return cfg, notes


def _warmup(
    kept: float, length: float, fraction: float, unit: str, was: str, how: str = "the same share"
) -> tuple[float, str | None]:
    """The recipe's warm-up `kept` when it fits in half of `length`, else `fraction` of it (and a note saying so)."""
    if kept <= length / 2:
        return kept, None
    warm = fraction * length
    return warm, f"warm-up: the recipe's {was} do not fit in half of the run; {warm:g} {unit} instead ({how})"


def _train_steps(cfg: Any, steps: int) -> tuple[Any, list[str]]:
    t = cfg.train
    notes = []
    if t.epochs is not None:  # an epoch recipe: its warm-up and evaluation counts as shares of its epochs
        evaluations = saves = max(1, math.ceil(t.epochs))  # once per epoch, both
        if t.warmup_epochs is not None:
            warm = round(t.warmup_epochs / t.epochs * steps)
            notes.append(f"warm-up: the recipe's {t.warmup_epochs:g} of {t.epochs:g} epochs = {warm} of {steps} steps")
        else:
            warm, note = _warmup(t.warmup_steps, steps, 0.5, "steps", f"{t.warmup_steps} warm-up steps", "half")
            warm = round(warm)
            notes += [note] if note else []
    else:
        evaluations = max(1, math.ceil(t.steps / t.eval_every))
        saves = max(1, math.ceil(t.steps / t.ckpt_every))
        fraction = t.warmup_steps / t.steps
        warm, note = _warmup(t.warmup_steps, steps, fraction, "steps", f"{t.warmup_steps} of {t.steps} steps")
        warm = round(warm)
        notes += [note] if note else []
    train = dataclasses.replace(
        t,
        steps=steps,
        epochs=None,
        warmup_epochs=None,
        warmup_steps=min(warm, steps),
        eval_every=max(1, math.ceil(steps / evaluations)),
        ckpt_every=max(1, math.ceil(steps / saves)),
        log_every=max(1, min(t.log_every, steps // 10)),
    )
    notes.insert(
        0, f"length: {steps} steps (--steps), evaluated every {train.eval_every}, saved every {train.ckpt_every}"
    )
    return dataclasses.replace(cfg, train=train), notes


def _train_epochs(cfg: Any, epochs: float) -> tuple[Any, list[str]]:
    t = cfg.train
    notes = []
    if t.epochs is not None:
        warm_epochs = t.warmup_epochs
        if warm_epochs is not None:
            warm_epochs, note = _warmup(
                warm_epochs, epochs, warm_epochs / t.epochs, "epochs", f"{warm_epochs:g} of {t.epochs:g} epochs"
            )
            notes += [note] if note else []
    elif t.warmup_epochs is not None:  # a step recipe given its warm-up in epochs (--set): kept as given
        warm_epochs = t.warmup_epochs
        notes.append(f"warm-up: {warm_epochs:g} of {epochs:g} epochs (train.warmup_epochs)")
    else:  # a step recipe: its warm-up becomes the same share of the epochs
        warm_epochs = t.warmup_steps / t.steps * epochs
        notes.append(
            f"warm-up: the recipe's {t.warmup_steps} of {t.steps} steps = {warm_epochs:g} of {epochs:g} epochs"
        )
    train = dataclasses.replace(t, epochs=epochs, warmup_epochs=warm_epochs)
    notes.insert(0, f"length: {epochs:g} epochs (--epochs), evaluated and saved once per epoch")
    return dataclasses.replace(cfg, train=train), notes


def _probe_epochs(cfg: Any, epochs: float) -> tuple[Any, list[str]]:
    p = cfg.probe
    if epochs != int(epochs):
        raise ConfigError(f"--epochs: the linear probe trains whole epochs; {epochs:g} is not one")
    epochs = int(epochs)
    warm, note = _warmup(
        p.warmup_epochs, epochs, p.warmup_epochs / p.epochs, "epochs", f"{p.warmup_epochs} of {p.epochs} epochs"
    )
    probe = dataclasses.replace(p, epochs=epochs, warmup_epochs=min(int(round(warm)), epochs))
    notes = [f"length: {epochs} probe epochs (--epochs)"] + ([note] if note else [])
    return dataclasses.replace(cfg, probe=probe), notes
