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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mimkit.engine import checkpoint as ckpt
from mimkit.engine.distributed import DistEnv, all_reduce_sum, barrier, broadcast_flag
from mimkit.engine.metrics import MetricsLogger, Progress, read_metrics
from mimkit.engine.schedule import warmup_cosine_factor


class NonFiniteLossError(RuntimeError):
    pass


class Interrupted(Exception):
    """Raised after a signal: the checkpoint is saved and the process should exit with `exit_code`."""

    def __init__(self, signame: str, exit_code: int, step: int):
        super().__init__(f"{signame} received: checkpoint saved at step {step}")
        self.exit_code = exit_code
        self.step = step


@dataclass
class FitResult:
    step: int
    best: float | None  # best value of the engine's best_metric
    final: dict[str, dict[str, float]]  # last evaluation: split -> metrics


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """None = fp32. 'auto' is bf16 autocast on GPU and fp32 on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def step_seed(seed: int, step: int, rank: int) -> int:
    """Reseed the global RNG (dropout, drop-path) per step and rank: a resumed run draws what an unbroken one did."""
    return (seed * 1_000_003 + step * 9_973 + rank * 7) % (2**63 - 1)


class Engine:
    def __init__(self, cfg: Any, run_dir: Path, method: nn.Module, env: DistEnv, stream: Any,
                 evaluators: dict[str, Any], meta: dict[str, Any] | None = None,
                 best_metric: tuple[str, str, str] = ("heldout", "loss", "min")):
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
        fused = env.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(groups, lr=self.t.lr, betas=tuple(self.t.betas), fused=fused or None)
        min_ratio = self.t.min_lr / self.t.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine_factor(s, self.t.steps, self.t.warmup_steps, min_ratio))
        self.model: nn.Module = self.method
        if env.enabled:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.model = DistributedDataParallel(  # distillation may leave the student's last parts unused
                self.method, device_ids=ids, find_unused_parameters=getattr(self.method, "find_unused_parameters",
                                                                            False))
        self.logger = MetricsLogger(run_dir, env.is_main, tensorboard=self.t.tensorboard)
        self.start_step = 0
        self.best: float | None = None
        self.nonfinite = 0
        self.skipped_total = 0
        self._signal: str | None = None

    # ------------------------------------------------------------------------------------------- helpers
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    def _train_state(self, step: int) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": ckpt.rng_state(), "step": step,
                "best": self.best if self.best is not None else float("nan"), "nonfinite": self.nonfinite,
                "skipped_total": self.skipped_total}

    def save(self, step: int) -> Path | None:
        path = None
        if self.env.is_main:
            meta = {**self.meta, "epoch": self.stream.epoch_of(max(step - 1, 0)),
                    "best_heldout": self.best, "config": self.cfg.to_dict()}
            path = ckpt.save_checkpoint(self.ckpt_root, step, self.method.state_dict(), self._train_state(step),
                                        meta)
            ckpt.prune(self.ckpt_root, self.t.keep_last)
        barrier(self.env)
        return path

    def resume(self) -> int:
        """Continue from RUN_DIR/checkpoints/last when it exists; returns the step to start from."""
        try:
            ckpt_dir = ckpt.find_checkpoint(self.run_dir)
        except ckpt.CheckpointError:
            return 0
        weights = ckpt.load_weights(ckpt_dir)
        try:
            self.method.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise ckpt.CheckpointError(
                f"checkpoint '{ckpt_dir}' does not fit this config's model ({str(err).splitlines()[0]}...). "
                "Use a new --out directory, or the config the run was started with.") from None
        state = ckpt.load_train_state(ckpt_dir)
        if state is None:  # imported weights: start training from them at step 0
            return 0
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        best = float(state["best"])
        self.best = None if math.isnan(best) else best
        self.nonfinite = int(state["nonfinite"])
        self.skipped_total = int(state.get("skipped_total", 0))
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
            self.logger.log({"event": "eval", "split": split, "step": step, "epoch": epoch, **metrics,
                             "time": time.time()})
        return results

    def recorded_eval(self, step: int) -> dict[str, dict[str, float]]:
        """The evaluation already logged at `step` ({} when metrics.jsonl lacks it)."""
        skip = {"event", "split", "step", "epoch", "time", "lr"}
        return {r["split"]: {k: v for k, v in r.items() if k not in skip}
                for r in read_metrics(self.logger.path) if r.get("event") == "eval" and r.get("step") == step}

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
        t, env = self.t, self.env
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
        interval_loss, interval_steps, interval_t0 = 0.0, 0, time.time()
        interval_parts: dict[str, float] = {}
        self.method.train()
        try:
            for step in range(start, t.steps):
                seed = step_seed(self.cfg.seed, step, env.rank)
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)  # timm Mixup/CutMix draw from numpy
                random.seed(seed)
                epoch = self.stream.epoch_of(step)
                loss_value, grad_norm = self._train_step(step)
                finite = math.isfinite(grad_norm) and math.isfinite(loss_value)
                done = step + 1
                if finite:
                    self.nonfinite = 0
                    interval_loss += loss_value
                    interval_steps += 1
                    for key, value in self.loss_parts.items():
                        interval_parts[key] = interval_parts.get(key, 0.0) + value
                else:
                    self.nonfinite += 1
                    self.skipped_total += 1
                    self.logger.log({"event": "nonfinite", "split": "train", "step": done, "epoch": epoch,
                                     "loss": loss_value, "consecutive": self.nonfinite, "time": time.time()})
                    if self.nonfinite >= t.max_nonfinite:
                        last = ckpt.find_checkpoint(self.run_dir) if (self.ckpt_root / "last").exists() else None
                        raise NonFiniteLossError(
                            f"{self.nonfinite} consecutive steps had a non-finite loss or gradient (last at step "
                            f"{done}); stopping. Last good checkpoint: {last or 'none saved yet'}. Try a lower "
                            "train.lr, train.clip_grad, or train.precision=fp32.")
                lr = max(g["lr"] for g in self.optimizer.param_groups)  # the peak group's (layer decay)
                if done % t.log_every == 0 or done == t.steps:
                    part_keys = sorted(interval_parts)
                    loss_sum, count, *part_sums = all_reduce_sum(
                        [interval_loss, interval_steps, *(interval_parts[k] for k in part_keys)], env)
                    count = count / env.world_size
                    elapsed = time.time() - interval_t0
                    steps_in_interval = max(1, done - max(start, done - t.log_every))
                    img_per_s = steps_in_interval * t.batch_size / max(elapsed, 1e-9)
                    mean_loss = loss_sum / env.world_size / max(count, 1)
                    self.logger.log({"event": "train", "split": "train", "step": done, "epoch": epoch,
                                     "loss": mean_loss, "lr": lr, "img_per_s": img_per_s, "grad_norm": grad_norm,
                                     **{k: v / env.world_size / max(count, 1) for k, v in zip(part_keys, part_sums)},
                                     "time": time.time()})
                    progress.update(done, mean_loss, img_per_s, lr)
                    interval_loss, interval_steps, interval_t0 = 0.0, 0, time.time()
                    interval_parts = {}
                saved = False
                if done % t.eval_every == 0 or done == t.steps:
                    last_eval = self.evaluate(done, epoch)
                    if self._is_better(last_eval):
                        self.save(done)
                        saved = True
                        if env.is_main:
                            ckpt.mark_best(self.ckpt_root, done)
                if not saved and (done % t.ckpt_every == 0 or done == t.steps):
                    self.save(done)
                if broadcast_flag(self._signal is not None, env):
                    if not saved and done % t.ckpt_every and done != t.steps:
                        self.save(done)
                    name = self._signal or "SIGTERM"
                    progress.message(f"{name}: checkpoint saved at step {done}; re-run the same command to "
                                     "resume")
                    raise Interrupted(name, 130 if name == "SIGINT" else 143, done)
        finally:
            progress.close()
            self.logger.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        return FitResult(t.steps, self.best, last_eval)

    def _train_step(self, step: int) -> tuple[float, float]:
        """Forward/backward over accum micro-batches, clip, optimizer step (skipped when non-finite)."""
        t = self.t
        total_loss = 0.0
        self.loss_parts: dict[str, float] = {}
        for micro in range(t.accum_steps):
            batch = self.stream.get(step, micro)
            sync = micro == t.accum_steps - 1 or not self.env.enabled
            context = contextlib.nullcontext() if sync else self.model.no_sync()
            with context:
                with self.autocast():
                    out = self.model(batch)
                loss = out["loss"]
                self.scaler.scale(loss / t.accum_steps).backward()
            total_loss += float(loss.detach()) / t.accum_steps
            for key, value in out.items():  # components such as cls_loss / loc_loss, logged beside the loss
                if key.endswith("_loss"):
                    self.loss_parts[key] = self.loss_parts.get(key, 0.0) + float(value.detach()) / t.accum_steps
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = t.clip_grad if t.clip_grad is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if math.isfinite(grad_norm) or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # with fp16 the scaler itself skips inf/nan steps
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        hook = getattr(self.method, "after_optimizer_step", None)
        if hook is not None:  # e.g. MoCo v3's momentum-encoder update
            hook(step, self.t.steps)
        with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        if self.scaler.is_enabled() and not math.isfinite(grad_norm):
            grad_norm = 0.0 if math.isfinite(total_loss) else grad_norm  # an fp16 overflow is not a failure
        return total_loss, grad_norm
