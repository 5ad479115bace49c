"""The `train:` config section (the Engine's loop, optimizer, precision, evaluation and checkpoint cadence): its
keys, their checks and their derived defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mimkit.errors import check, one_of

COMPILE_MODES = ("reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    steps: int = 1000
    epochs: float | None = None  # when set, steps = ceil(epochs * train images / batch) and evaluation is per epoch
    warmup_epochs: float | None = None  # when set (with epochs), replaces warmup_steps
    batch_size: int = 256  # global batch: all processes x accumulation steps
    accum_steps: int = 1
    lr: float | None = None  # None: base_lr * batch_size / 256
    base_lr: float = 1.5e-4
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float | None = None
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    # torch.compile the training forward: false | true | auto (CUDA only) | an inductor mode (reduce-overhead = CUDA
    # graphs, max-autotune, max-autotune-no-cudagraphs)
    compile: bool | str = False
    grad_checkpointing: bool = False  # recompute block activations in backward: less memory, ~1/3 more compute
    # the training step's speed-ups (docs/performance.md, "The fast path"): the last block only where the loss reads
    # it, MAE's visible-patch embedding, the fused pixel losses. Same loss and gradients; false runs every method's
    # plain code (forward_mim / forward_loss), e.g. to check a change against it
    fast_path: bool = True
    eval_every: int = 100
    eval_samples: int = 512  # size of the fixed held-out and fixed train subsets
    eval_batch_size: int = 256
    ckpt_every: int = 500
    keep_last: int = 2
    # also save at every multiple of this many steps and never prune those checkpoints (null: off): the encoder at
    # several lengths of one run, e.g. MAE every 20 epochs, each usable as `--init RUN/checkpoints/step-NNNNNNN`
    keep_every: int | None = None
    log_every: int = 10
    max_nonfinite: int = 10  # consecutive non-finite steps before the run stops
    # torchrun: seconds a collective waits for the other ranks before failing (a stopped or hung rank becomes an
    # error on the others, exit 75, instead of a silent wait); raise it when evaluation or checkpoint writes on
    # rank 0 take longer
    dist_timeout: float = 300.0
    reconstruct: bool = True  # write the reconstruction figure at the end
    # where metrics go besides metrics.jsonl (always written): tensorboard (RUN/tensorboard/) and/or wandb; a
    # listed backend that is not installed is a config error (engine/loggers.py)
    loggers: list[str] = field(default_factory=list)
    tensorboard: bool = False  # the older switch: true adds tensorboard to loggers when it is installed
    wandb_project: str = "mimkit"
    wandb_mode: str | None = None  # online | offline | disabled; null: W&B's own default (WANDB_MODE, else online)


def validate_train(cfg: Any) -> None:
    t = cfg.train
    check(t.steps > 0, f"train.steps: {t.steps} must be positive")
    check(t.batch_size > 0, f"train.batch_size: {t.batch_size} must be positive")
    check(t.accum_steps > 0, f"train.accum_steps: {t.accum_steps} must be positive")
    check(
        t.batch_size % t.accum_steps == 0,
        f"train.batch_size: {t.batch_size} is not divisible by train.accum_steps {t.accum_steps}",
    )
    check(t.lr is None or t.lr > 0, f"train.lr: {t.lr} must be positive")
    check(t.base_lr > 0, f"train.base_lr: {t.base_lr} must be positive")
    check(t.min_lr >= 0, f"train.min_lr: {t.min_lr} must be >= 0")
    peak = t.lr if t.lr is not None else t.base_lr * t.batch_size / 256
    check(
        t.min_lr <= peak,
        f"train.min_lr: {t.min_lr} is above the peak lr {peak:g} (train.lr, or base_lr x batch_size / 256): the "
        "schedule would climb instead of decay; lower train.min_lr",
    )
    check(
        0 <= t.warmup_steps <= t.steps,
        f"train.warmup_steps: {t.warmup_steps} must be in [0, train.steps] (train.steps is {t.steps}); to shorten a "
        "run, `--steps N` scales the warm-up with it",
    )
    check(t.epochs is None or 0 < t.epochs <= 1e6, f"train.epochs: {t.epochs} must be in (0, 1e6] or null")
    check(
        t.warmup_epochs is None or t.warmup_epochs >= 0,
        f"train.warmup_epochs: {t.warmup_epochs} must be >= 0 or null",
    )
    check(
        t.warmup_epochs is None or t.epochs is None or 0 <= t.warmup_epochs <= t.epochs,
        f"train.warmup_epochs: {t.warmup_epochs} must be in [0, train.epochs] (it applies only with train.epochs)",
    )
    check(t.weight_decay >= 0, f"train.weight_decay: {t.weight_decay} must be >= 0")
    check(
        len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), f"train.betas: {t.betas} must be two values in [0, 1)"
    )
    check(t.clip_grad is None or t.clip_grad > 0, f"train.clip_grad: {t.clip_grad} must be positive or null")
    one_of("train.precision", t.precision, ["auto", "fp32", "bf16", "fp16"])
    check(
        t.compile in (True, False, "auto", *COMPILE_MODES),
        f"train.compile: {t.compile!r} must be true, false, auto or one of {', '.join(COMPILE_MODES)}",
    )
    for key in ("eval_every", "eval_samples", "eval_batch_size", "ckpt_every", "log_every", "max_nonfinite"):
        check(getattr(t, key) > 0, f"train.{key}: {getattr(t, key)} must be positive")
    check(t.keep_last >= 1, f"train.keep_last: {t.keep_last} must be >= 1")
    check(
        t.keep_every is None or (isinstance(t.keep_every, int) and t.keep_every > 0),
        f"train.keep_every: {t.keep_every!r} must be a positive number of steps, or null to keep only the last",
    )
    check(t.dist_timeout >= 1, f"train.dist_timeout: {t.dist_timeout} must be at least 1 second")
    from mimkit.engine.loggers import check_loggers

    check_loggers(t)


def resolve_train(cfg: Any) -> None:
    t = cfg.train
    if t.lr is None:
        t.lr = t.base_lr * t.batch_size / 256


def resolve_epochs(cfg: Any, train_images: int) -> Any:
    """With `train.epochs` set: steps, warmup and per-epoch evaluation from the training-set size."""
    t = cfg.train
    if t.epochs is None:
        return cfg
    per_epoch = max(1, train_images // t.batch_size)
    steps = max(1, math.ceil(t.epochs * per_epoch))
    warmup = round(t.warmup_epochs * per_epoch) if t.warmup_epochs is not None else min(t.warmup_steps, steps)
    train = dataclasses.replace(
        t, steps=steps, warmup_steps=min(warmup, steps), eval_every=per_epoch, ckpt_every=per_epoch
    )
    return dataclasses.replace(cfg, train=train)
