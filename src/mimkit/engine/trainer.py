"""The Engine: one loop for every objective. It knows nothing about MIM; a Method turns batches into losses.

Owns: device and DDP, precision, gradient accumulation and clipping, the lr schedule, held-out evaluation hooks,
checkpoints (last / best / keep-last-K), resume, SIGTERM/SIGINT, the non-finite guard, metrics and progress.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mimkit.compat import fused_step, fused_step_divides_gradients
from mimkit.engine import checkpoint as ckpt
from mimkit.engine.distributed import DistEnv, all_ranks_true, all_reduce_sum, barrier, broadcast_flag
from mimkit.engine.metrics import MetricsLogger, Progress, read_metrics
from mimkit.engine.schedule import warmup_cosine_factor
from mimkit.errors import Interrupted, NonFiniteLossError  # noqa: F401 - raised here, imported from here too

if TYPE_CHECKING:  # the Engine knows the Method interface, not any method
    from mimkit.data.stream import Stream
    from mimkit.methods.base import Method


@dataclass
class FitResult:
    step: int
    best: float | None  # best value of the engine's best_metric
    final: dict[str, dict[str, float]]  # last evaluation: split -> metrics
    seconds: float = 0.0  # wall-clock time of fit, summed over the sessions of a resumed run (up to its checkpoints)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """None = fp32. 'auto' is bf16 autocast on GPU and fp32 on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


COMPILE_BACKEND = "inductor"  # tests switch to "aot_eager": the same graph capture without code generation


def compile_model(model: nn.Module, setting: bool | str, device: torch.device) -> nn.Module:
    """train.compile: True compiles the training forward, 'auto' only on CUDA (on CPU compiling costs minutes
    and was not faster in `mimkit bench`), a mode name compiles with that inductor mode ('reduce-overhead' replays
    CUDA graphs). The module and its state dict are shared with the eager one."""
    if setting == "auto":
        setting = device.type == "cuda"
    if not setting:
        return model
    mode = setting if isinstance(setting, str) and COMPILE_BACKEND == "inductor" else None
    return torch.compile(model, backend=COMPILE_BACKEND, mode=mode)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Reseed the global RNG (dropout, drop-path) per step and rank: a resumed run draws what an unbroken one did."""
    return (seed * 1_000_003 + step * 9_973 + rank * 7) % (2**63 - 1)


class Engine:
    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        method: Method,
        env: DistEnv,
        stream: Stream,
        evaluators: dict[str, Any],
        meta: dict[str, Any] | None = None,
        best_metric: tuple[str, str, str] = ("heldout", "loss", "min"),
    ):
        self.cfg, self.run_dir, self.env, self.stream = cfg, run_dir, env, stream
        self.t = cfg.train
        self.method = method.to(env.device)
        self.evaluators = evaluators
        self.meta = meta or {}
        self.best_metric = best_metric  # (split, metric, min|max) that picks checkpoints/best
        self.ckpt_root = run_dir / "checkpoints"
        self.amp_dtype = resolve_precision(self.t.precision, env.device)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=self.amp_dtype == torch.float16)
        groups = method.param_groups(self.t.weight_decay)
        for group in groups:
            group["lr"] = self.t.lr * group.get("lr_scale", 1.0)
        # fused AdamW (one kernel for all parameters, CPU and CUDA) also skips non-finite steps on the device
        self.optimizer = torch.optim.AdamW(groups, lr=self.t.lr, betas=tuple(self.t.betas), fused=True)
        min_ratio = self.t.min_lr / self.t.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine_factor(s, self.t.steps, self.t.warmup_steps, min_ratio)
        )
        self.model: nn.Module = self.method
        if env.enabled:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.model = DistributedDataParallel(  # distillation may leave the student's last parts unused
                self.method, device_ids=ids, find_unused_parameters=self.method.find_unused_parameters
            )
        self.forward_model = compile_model(self.model, self.t.compile, env.device)
        from mimkit.engine.loggers import requested

        self.logger = MetricsLogger(run_dir, env.is_main, requested(self.t), self.t, cfg.to_dict())
        self.start_step = 0
        self.best: float | None = None
        self.nonfinite = 0
        self.skipped_total = 0
        self.seconds_before, self.fit_t0 = 0.0, None  # fit's wall-clock time: earlier sessions', this one's start
        self.saved_seconds: tuple[int, float] | None = None  # (step, seconds) of the last checkpoint written
        self._signal: str | None = None

    # ------------------------------------------------------------------------------------------- helpers
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    def _train_state(self, step: int) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "step": step,
            "best": self.best if self.best is not None else float("nan"),
            "nonfinite": self.nonfinite,
            "skipped_total": self.skipped_total,
            "seconds": self._record_seconds(step),
        }

    def _record_seconds(self, step: int) -> float:
        self.saved_seconds = (step, self.seconds_so_far())
        return self.saved_seconds[1]

    def seconds_so_far(self) -> float:
        """Wall-clock seconds of fit: the earlier sessions' (as their last checkpoint recorded) plus this one's."""
        return self.seconds_before + (time.time() - self.fit_t0 if self.fit_t0 is not None else 0.0)

    def save(self, step: int) -> Path | None:
        path = None
        if self.env.is_main:
            meta = {
                **self.meta,
                "epoch": self.stream.epoch_of(max(step - 1, 0)),
                "best_heldout": self.best,
                "config": self.cfg.to_dict(),
            }
            path = ckpt.save_checkpoint(self.ckpt_root, step, self.method.state_dict(), self._train_state(step), meta)
            ckpt.prune(self.ckpt_root, self.t.keep_last, self.t.keep_every)
        barrier(self.env)
        return path

    def resume(self) -> int:
        """Continue from RUN_DIR/checkpoints/last when it exists; returns the step to start from."""
        if self.env.is_main and self.ckpt_root.is_dir():
            ckpt.clean_stale(self.ckpt_root)  # what a killed process left half-written (the run's lock is held)
        try:
            ckpt_dir = ckpt.find_checkpoint(self.run_dir)
        except ckpt.CheckpointError:
            self.logger.truncate_after(-1)  # a run killed before its first checkpoint starts over: no stale rows
            return 0
        weights = ckpt.load_weights(ckpt_dir)
        try:
            self.method.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise ckpt.CheckpointError(
                f"checkpoint '{ckpt_dir}' does not fit this config's model ({str(err).splitlines()[0]}...). "
                "Use a new --out directory, or the config the run was started with."
            ) from None
        state = ckpt.load_train_state(ckpt_dir)
        if state is None:  # imported weights: start training from them at step 0
            self.logger.truncate_after(-1)
            return 0
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:  # torch: parameter groups of another count or size
            raise ckpt.CheckpointError(
                f"checkpoint '{ckpt_dir}' holds optimizer state for other parameter groups than this run builds "
                f"({err}): it was written with another layer-decay or weight-decay grouping, or by a mimkit "
                "version that grouped parameters differently. Use a new --out directory, or the config and mimkit "
                "version the run was started with."
            ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        best = float(state["best"])
        self.best = None if math.isnan(best) else best
        self.nonfinite = int(state["nonfinite"])
        self.skipped_total = int(state.get("skipped_total", 0))
        self.seconds_before = float(state.get("seconds", 0.0))  # checkpoints before mimkit recorded it: 0
        step = int(state["step"])
        self.logger.truncate_after(step)
        return step

    def _install_signals(self) -> dict[int, Any]:
        previous = {}

        def handler(signum, _frame):
            self._signal = signal.Signals(signum).name

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return previous

    def evaluate(self, step: int, epoch: int) -> dict[str, dict[str, float]]:
        """Every evaluator returns {'loss': ..., plus e.g. 'top1'}; one metrics event per split."""
        results = {}
        for split, evaluator in self.evaluators.items():
            metrics = evaluator.evaluate(self.method)
            results[split] = metrics
            self.logger.log(
                {"event": "eval", "split": split, "step": step, "epoch": epoch, **metrics, "time": time.time()}
            )
        return results

    def recorded_eval(self, step: int) -> dict[str, dict[str, float]]:
        """The evaluation already logged at `step` ({} when metrics.jsonl lacks it)."""
        skip = {"event", "split", "step", "epoch", "time", "lr"}
        return {
            r["split"]: {k: v for k, v in r.items() if k not in skip}
            for r in read_metrics(self.logger.path)
            if r.get("event") == "eval" and r.get("step") == step
        }

    def _is_better(self, results: dict[str, dict[str, float]]) -> bool:
        split, key, mode = self.best_metric
        value = results.get(split, {}).get(key)
        if value is None or not math.isfinite(value):
            return False
        if self.best is None or (value < self.best if mode == "min" else value > self.best):
            self.best = value
            return True
        return False

    # ------------------------------------------------------------------------------------------- the loop
    def fit(self) -> FitResult:
        """Train from the resume point to train.steps. Steps run without waiting on the device: their losses,
        gradient norms and non-finite flags stay on it until the next log, evaluation or checkpoint step, where
        one transfer settles them all (`_settle`)."""
        t, env = self.t, self.env
        self.fit_t0 = time.time()
        start = self.start_step = self.resume()
        previous_handlers = self._install_signals()
        progress = Progress(t.steps, start, env.is_main, t.log_every)
        if start > 0:
            progress.message(f"resumed from step {start} ({self.ckpt_root / 'last'})")
        last_eval: dict[str, dict[str, float]] = {}
        if start == 0 and self.evaluators:
            last_eval = self.evaluate(0, 0)
        elif start >= t.steps and self.evaluators:  # killed after its last checkpoint: report the final numbers
            last_eval = self.recorded_eval(start) or self.evaluate(start, self.stream.epoch_of(start - 1))
        interval = _Interval(time.time())
        pending: list[tuple[int, int, StepStats]] = []
        self.method.train()
        try:
            for step in range(start, t.steps):
                seed = step_seed(self.cfg.seed, step, env.rank)
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)  # timm Mixup/CutMix draw from numpy
                random.seed(seed)
                epoch = self.stream.epoch_of(step)
                done = step + 1
                pending.append((done, epoch, self.train_step(step)))
                at_log = done % t.log_every == 0 or done == t.steps
                at_eval = done % t.eval_every == 0 or done == t.steps
                at_ckpt = done % t.ckpt_every == 0 or done == t.steps or (t.keep_every and done % t.keep_every == 0)
                # a signal is checked every step on one process (free) and on CPU; on GPUs with DDP only where the
                # loop synchronises anyway, so no step waits on an all-reduce of the flag
                check_signal = not env.enabled or env.device.type == "cpu" or at_log or at_eval or at_ckpt
                stop = check_signal and broadcast_flag(self._signal is not None, env)
                if at_log or at_eval or at_ckpt or stop:
                    self._settle(pending, interval)
                    pending = []
                if at_log:
                    self._log_interval(interval, done, epoch, start, progress)
                    interval = _Interval(time.time())
                saved = False
                # no checkpoint while non-finite steps are running: the one the guard names stays a clean one
                clean = self.nonfinite == 0
                if at_eval:
                    last_eval = self.evaluate(done, epoch)
                    if clean and self._is_better(last_eval):
                        self.save(done)
                        saved = True
                        if env.is_main:
                            ckpt.mark_best(self.ckpt_root, done)
                if not saved and at_ckpt and clean:
                    self.save(done)
                    saved = True
                if stop:
                    if not saved and clean:
                        self.save(done)
                        saved = True
                    name = self._signal or "SIGTERM"
                    stopped = Interrupted(name, 130 if name == "SIGINT" else 143, done, saved)
                    progress.message(f"{stopped}; re-run the same command to resume")
                    raise stopped
        except BaseException:
            self.logger.close()  # the backends too: a failed or stopped run's W&B run ends here
            raise
        finally:
            progress.close()
            self.logger.close_file()  # a finished run's backends stay open for its final figures (pretrain)
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        # the time the final checkpoint recorded, so that a finished run re-run (which trains nothing) reports the
        # same; without a final checkpoint (non-finite steps at the end), the time now
        if start >= t.steps:
            seconds = self.seconds_before
        elif self.saved_seconds is not None and self.saved_seconds[0] == t.steps:
            seconds = self.saved_seconds[1]
        else:
            seconds = self.seconds_so_far()
        return FitResult(t.steps, self.best, last_eval, seconds)

    def _settle(self, pending: list[tuple[int, int, "StepStats"]], interval: "_Interval") -> None:
        """Bring the pending steps' numbers to the host in one transfer: add finite steps to the interval, log
        each non-finite one (they were skipped on the device) and stop after train.max_nonfinite in a row."""
        if not pending:
            return
        part_keys = sorted(pending[-1][2].parts)
        rows = torch.stack(
            [
                torch.stack([s.loss, s.grad_norm, s.finite.float(), *(s.parts[k] for k in part_keys)]).float()
                for _, _, s in pending
            ]
        ).tolist()
        for (done, epoch, _), (loss, grad_norm, finite, *parts) in zip(pending, rows):
            if finite:
                self.nonfinite = 0
                interval.add(loss, grad_norm, dict(zip(part_keys, parts)))
                continue
            self.nonfinite += 1
            self.skipped_total += 1
            self.logger.log(
                {
                    "event": "nonfinite",
                    "split": "train",
                    "step": done,
                    "epoch": epoch,
                    "loss": loss,
                    "consecutive": self.nonfinite,
                    "time": time.time(),
                }
            )
            if self.nonfinite >= self.t.max_nonfinite:
                last = ckpt.find_checkpoint(self.run_dir) if (self.ckpt_root / "last").exists() else None
                first_bad = done - self.nonfinite + 1
                raise NonFiniteLossError(
                    f"{self.nonfinite} consecutive steps had a non-finite loss or gradient (steps {first_bad}-"
                    f"{done}); stopping. Last good checkpoint, saved before step {first_bad}: "
                    f"{last or 'none saved yet'}. Try a lower "
                    "train.lr, train.clip_grad, or train.precision=fp32."
                )

    def _log_interval(self, interval: "_Interval", done: int, epoch: int, start: int, progress: Progress) -> None:
        env = self.env
        lr = max(g["lr"] for g in self.optimizer.param_groups)  # the peak group's (layer decay)
        part_keys = sorted(interval.parts)
        loss_sum, count, *part_sums = all_reduce_sum(
            [interval.loss, interval.steps, *(interval.parts[k] for k in part_keys)], env
        )
        count = count / env.world_size
        elapsed = time.time() - interval.t0
        steps_in_interval = max(1, done - max(start, done - self.t.log_every))
        img_per_s = steps_in_interval * self.t.batch_size / max(elapsed, 1e-9)
        # an interval whose every step was skipped (non-finite) has no loss: null, not 0
        mean_loss = loss_sum / env.world_size / count if count > 0 else float("nan")
        self.logger.log(
            {
                "event": "train",
                "split": "train",
                "step": done,
                "epoch": epoch,
                "loss": mean_loss,
                "lr": lr,
                "img_per_s": img_per_s,
                "grad_norm": interval.grad_norm,
                **{k: v / env.world_size / count if count > 0 else None for k, v in zip(part_keys, part_sums)},
                "time": time.time(),
            }
        )
        progress.update(done, mean_loss, img_per_s, lr)

    def train_step(self, step: int) -> "StepStats":
        """One optimizer step, exactly as `fit` runs it (public: the bench times it): forward/backward over accum
        micro-batches, clip, optimizer step; a non-finite step is skipped on the device (the fused AdamW's
        found_inf), so nothing here waits for the GPU."""
        t = self.t
        total_loss = torch.zeros((), device=self.env.device)
        parts: dict[str, torch.Tensor] = {}
        for micro in range(t.accum_steps):
            batch = self.stream.get(step, micro)
            sync = micro == t.accum_steps - 1 or not self.env.enabled
            context = contextlib.nullcontext() if sync else self.model.no_sync()
            with context:
                with self.autocast():
                    out = self.forward_model(batch)
                loss = out["loss"]
                self.scaler.scale(loss / t.accum_steps).backward()
            total_loss += loss.detach().float() / t.accum_steps
            for key, value in out.items():  # components such as cls_loss / loc_loss, logged beside the loss
                if key.endswith("_loss"):
                    parts[key] = parts.get(key, 0.0) + value.detach().float() / t.accum_steps
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # fp16's GradScaler passes its own grad_scale to a fused step, so there the gradients are clipped in place
        grad_norm, clip_scale = clip_gradients(self.optimizer, params, t.clip_grad, fold=not self.scaler.is_enabled())
        loss_finite = all_ranks_true(torch.isfinite(total_loss), self.env)
        if self.scaler.is_enabled():  # fp16: the scaler skips overflowing steps itself; an overflow is no failure
            self.scaler.step(self.optimizer)
            finite = loss_finite
            grad_norm = torch.where(torch.isfinite(grad_norm), grad_norm, torch.zeros_like(grad_norm))
        else:
            finite = loss_finite & torch.isfinite(grad_norm)  # the norm of all-reduced gradients: same on every rank
            skip_if_nonfinite_step(self.optimizer, finite, clip_scale)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_optimizer_step(step, self.t.steps)  # e.g. MoCo v3's momentum-encoder update
        with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        return StepStats(total_loss, grad_norm, finite, parts)


@dataclass
class StepStats:
    """One optimizer step's numbers, still on the device."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    finite: torch.Tensor  # bool: the step was applied
    parts: dict[str, torch.Tensor]


@dataclass
class _Interval:
    """Sums over the finite steps since the last train log."""

    t0: float
    loss: float = 0.0
    steps: int = 0
    grad_norm: float = 0.0  # the last finite step's
    parts: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, grad_norm: float, parts: dict[str, float]) -> None:
        self.loss += loss
        self.steps += 1
        self.grad_norm = grad_norm
        for key, value in parts.items():
            self.parts[key] = self.parts.get(key, 0.0) + value


def clip_gradients(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], max_norm: float | None, fold: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The total gradient norm (fp32), and the gradients clipped to `max_norm` by torch's clip_grad_norm_ rule
    (scaled by max_norm / (norm + 1e-6) where that is below 1; None: no clipping). With `fold` and a fused
    optimizer the clipping is left to the step: the second value is the divisor for the step's grad_scale input,
    which the fused kernel applies as it reads each gradient (it writes the divided gradient back), saving the
    separate multiply's read of every gradient. Otherwise the gradients are scaled here and the second value is
    None."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads).float()
    if max_norm is None:
        return norm, None
    if fold and fused_step_divides_gradients(optimizer):
        return norm, torch.clamp((norm + 1e-6) / max_norm, min=1.0)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm, None


def skip_if_nonfinite_step(
    optimizer: torch.optim.Optimizer, finite: torch.Tensor, grad_scale: torch.Tensor | None = None
) -> None:
    """optimizer.step() that leaves parameters and state untouched when `finite` is False. Fused AdamW reads the
    decision on the device (its found_inf input, as GradScaler uses it); other optimizers need it on the host.
    `grad_scale` (fused only): the step divides every gradient by it (clip_gradients' folded clipping)."""
    if fused_step_divides_gradients(optimizer):
        fused_step(optimizer, (~finite).float(), grad_scale)
    elif bool(finite):
        optimizer.step()
