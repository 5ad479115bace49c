"""Where a training step's time goes, and so why its MFU is what it is.

torch.profiler times every operator of a few steps; each operator is sorted into a kind of work (weight matmuls,
attention, elementwise and norms, copies, optimizer, communication, other), and the time no operator covers is
`idle`: on a CPU the Python and framework overhead between operators, on a GPU the device waiting for the host.
The same kinds split the step's counted FLOPs, so each kind's time compares with what it would take at the
measured matmul peak. Because the kinds add up to the whole step, the gap between MFU and 100% splits into named
causes: matmuls below the peak, attention below the peak, and the time of work that counts no FLOPs."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from mimkit.bench.timing import sync

KINDS = ("matmul", "attention", "elementwise", "copies", "optimizer", "communication", "other", "idle")
FLOP_KINDS = ("matmul", "attention")  # the kinds that count FLOPs: set against the peak
# What each kind holds (the docs and reports print these).
KIND_NOTES = {
    "matmul": "weight matmuls and convolutions (linear layers, patch embedding)",
    "attention": "fused attention kernels, and batched matmuls (q k^T, attn v, relation matrices)",
    "elementwise": "norms, activations, residual adds, reductions, losses, inductor's fused kernels",
    "copies": "copies, casts, concatenations, gathers and scatters, fills, sorts: data movement without arithmetic",
    "optimizer": "AdamW, gradient clipping and zeroing",
    "communication": "all-reduce and other collectives",
    "other": "tensor bookkeeping (views, allocation) and the autograd engine",
    "idle": "covered by no operator: Python and framework overhead (CPU), the device waiting for the host (GPU)",
}

# First match wins, so the order matters: `_foreach_norm` is clipping, not a norm layer; inductor's fused kernels
# (triton_poi/per/red_fused_<ops>) are elementwise whatever ops they fused, its templates (triton_tem) matmuls;
# `bmm` is attention, not a weight matmul.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        ("communication", r"nccl|all_?reduce|all_?gather|reduce_?scatter|gloo|c10d|\bbroadcast\b"),
        ("optimizer", r"adam|\bsgd\b|\blamb\b|optimizer|_foreach_|multi_tensor|clip_grad"),
        ("matmul", r"^triton_tem"),
        ("elementwise", r"^triton_"),
        ("other", r"^autograd::|backward0$|^profilerstep"),
        ("attention", r"attention|flash|fmha|sdpa|\bbmm\b|baddbmm"),
        (
            "matmul",
            r"\b(mm|addmm|_addmm_activation|matmul|linear|addmv|mv|dot)\b|conv(?!ert)|gemm|xmma|cutlass|"
            r"nvjet|cublas",
        ),
        (
            "copies",
            r"copy|\bcat\b|stack|clone|contiguous|gather|scatter|index|memcpy|memset|fill|zero|\bpad\b|roll|"
            r"repeat|im2col|col2im|\b(sort|argsort|topk)\b|radixsort",
        ),
        (
            "other",
            r"::(empty\w*|as_strided\w*|view\w*|t|reshape|_reshape_alias|detach\w*|expand\w*|transpose|permute|"
            r"unsqueeze|squeeze|select|slice|split\w*|unbind|chunk|alias|_unsafe_view|resolve_\w+|lift\w*|"
            r"result_type|item|_local_scalar_dense|numpy_t|movedim|unflatten|flatten|narrow|set_|"
            r"requires_grad_|is_\w+)$",
        ),
        (
            "elementwise",
            r"gelu|relu|silu|sigmoid|tanh|norm|softmax|add|sub|mul|div|exp|log|pow|sqrt|sum|mean|var|"
            r"std|max|min|where|clamp|lerp|abs|neg|erf|dropout|bernoulli|elementwise|vectorized|reduce|"
            r"loss|entropy|masked|\b(lt|gt|eq|ne|ge|le)\b",
        ),
    )
)


def kind_of(name: str) -> str:
    """The kind of work an operator or kernel name stands for (aten ops, CUDA kernels, inductor kernels)."""
    lowered = name.lower()
    for kind, pattern in _RULES:
        if pattern.search(lowered):
            return kind
    return "other"


def flops_by_kind(flops_by_op: dict[str, float]) -> dict[str, float]:
    """Counted FLOPs (torch.utils.flop_counter's per-op totals, keyed like 'aten.mm') summed per kind."""
    out: dict[str, float] = defaultdict(float)
    for op, flops in flops_by_op.items():
        out[kind_of(op)] += flops
    return dict(out)


def _cpu_entries(prof: torch.profiler.profile) -> dict[tuple[str, str], float]:
    """(kind, operator) -> self CPU seconds (a CPU device: the operators are the work)."""
    out: dict[tuple[str, str], float] = defaultdict(float)
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CPU and not evt.is_async:
            out[(kind_of(evt.name), evt.name)] += evt.self_cpu_time_total / 1e6
    return dict(out)


def _device_entries(prof: torch.profiler.profile) -> dict[tuple[str, str], float]:
    """(kind, 'operator > kernel') -> kernel seconds on the device. A kernel counts under the operator that
    launched it; kernels no operator launched (inductor's, CUDA-graph replays) count under their own names.
    The kernel events are the totals; the operators only name them. Annotation spans (record_function regions
    such as `Optimizer.step`, inductor's `## Call CompiledFxGraph ##`) are no kernels and are left out, as
    torch's own device totals leave them out."""
    per_kernel: dict[str, float] = defaultdict(float)  # every kernel's time, by name
    named: dict[str, dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
    for evt in prof.events():
        if evt.is_async or getattr(evt, "is_user_annotation", False):
            continue
        if getattr(evt, "is_legacy", False) and evt.kernels:
            raise RuntimeError("the profiler fell back to legacy CUDA event timing (no CUPTI): kernels unseen")
        if evt.device_type == torch.autograd.DeviceType.CPU:
            kind = kind_of(evt.name)
            for kernel in evt.kernels:
                key = (kind if kind != "other" else kind_of(kernel.name), f"{evt.name} > {kernel.name}")
                named[kernel.name][key] += kernel.duration / 1e6
        else:
            per_kernel[evt.name] += evt.time_range.elapsed_us() / 1e6
    out: dict[tuple[str, str], float] = defaultdict(float)
    for name, seconds in per_kernel.items():
        owners = named.get(name, {})
        attributed = sum(owners.values())
        # never more than the kernels' own time: a runtime event's id can collide with an operator's and hand
        # that operator kernels twice
        scale = min(1.0, seconds / attributed) if attributed > 0 else 0.0
        for key, spent in owners.items():
            out[key] += spent * scale
        if seconds - attributed * scale > 1e-9:
            out[(kind_of(name), name)] += seconds - attributed * scale
    return dict(out)


@dataclass
class Breakdown:
    """Seconds per step of each kind of work, the profiled step's wall time, and the FLOPs per step per kind."""

    seconds: dict[str, float]
    step_seconds: float
    flops: dict[str, float] = field(default_factory=dict)
    top: list[tuple[str, str, float]] = field(default_factory=list)  # (operator or kernel, kind, seconds per step)
    profiled_seconds: float | None = None  # the profiled window's wall time per step, where step_seconds is timed

    def _total(self) -> float:
        """The step, or the kinds' own total where operators overlap (as a CPU's threads may)."""
        return max(self.step_seconds, sum(self.seconds.values()))

    def shares(self) -> dict[str, float]:
        """Each kind's fraction of the step; they add up to 1."""
        return {k: self.seconds.get(k, 0.0) / self._total() for k in KINDS}

    def efficiency(self, peak: float) -> dict[str, float]:
        """FLOP/s of each kind that counts FLOPs, as a fraction of the peak."""
        return {
            k: self.flops[k] / self.seconds[k] / peak for k in FLOP_KINDS if self.flops.get(k) and self.seconds.get(k)
        }

    def gap(self, peak: float) -> dict[str, float]:
        """The step split into `useful` (the counted FLOPs at the peak, i.e. the profiled step's MFU) and what
        keeps it from 100%: for matmul and attention their time beyond their FLOPs at the peak, for the other
        kinds all of their time. The parts add up to 1."""
        share, total = self.shares(), self._total()
        out = {"useful": 0.0}
        for kind in KINDS:
            ideal = min(self.flops.get(kind, 0.0) / peak, self.seconds.get(kind, 0.0)) / total
            out["useful"] += ideal
            out[kind] = share[kind] - ideal
        return out

    def on_timed_step(self, step_seconds: float) -> "Breakdown":
        """The same kernels' times against the timed (unprofiled) step: on a GPU the profiler slows the host, not
        the kernels, so a profiled window's extra wall time is the profiler's, not the step's. Idle becomes what the
        timed step leaves uncovered by kernels (none when they add up to more, as they may within the noise).
        docs/performance.md (the H200 run) shows a compiled row where this turned a third of the step from idle to
        the profiler's."""
        busy = sum(v for k, v in self.seconds.items() if k != "idle")
        seconds = {k: v for k, v in self.seconds.items() if k != "idle"}
        seconds["idle"] = max(0.0, step_seconds - busy)
        return Breakdown(
            seconds,
            step_seconds,
            dict(self.flops),
            list(self.top),
            profiled_seconds=self.profiled_seconds or self.step_seconds,
        )

    def as_dict(self, peak: float) -> dict:
        return {
            "seconds_per_step": dict(self.seconds),
            "step_seconds": self.step_seconds,
            "profiled_step_seconds": self.profiled_seconds or self.step_seconds,
            "flops_per_step": dict(self.flops),
            "shares": self.shares(),
            "efficiency": self.efficiency(peak),
            "gap": self.gap(peak),
            "top": [list(entry) for entry in self.top],
        }


# libkineto's own lines (profiler start/stop markers, and on a machine without a GPU "gpuGetDeviceCount failed"),
# which it writes straight to the process's stderr, below Python
KINETO_NOISE = re.compile(r"^(USDT|STAGE|INFO):\d{4}-\d\d-\d\d .*\.cpp:\d+\] |^ERROR:.*gpuGetDeviceCount failed")


@contextmanager
def profiler_logs_dropped() -> Iterator[None]:
    """Run the block with file descriptor 2 sent to a temporary file, then pass on every line but libkineto's
    markers (anything else, a real error included, still reaches stderr, after the block)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines = sink.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not KINETO_NOISE.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def profile_step(
    step: Callable[[], None], steps: int, device: torch.device, top: int = 15, trace: str | Path | None = None
) -> Breakdown:
    """Profile `steps` calls of an already warmed-up `step`; the kinds' seconds and the wall time, per step, and
    the `top` operators (CPU) or kernels (GPU) by time. Profiled steps run a little slower than timed ones (the
    profiler's own overhead), so shares are of the profiled step. `trace`: also write the Chrome trace there
    (gzip-compressed; chrome://tracing and Perfetto open it)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profiler_logs_dropped():
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            wall = time.perf_counter() - t0
        entries = _device_entries(prof) if device.type == "cuda" else _cpu_entries(prof)
    seconds: dict[str, float] = defaultdict(float)
    for (kind, _), spent in entries.items():
        seconds[kind] += spent / steps
    seconds = {k: v for k, v in seconds.items() if v > 0}
    seconds["idle"] = max(0.0, wall / steps - sum(seconds.values()))
    ranked = sorted(entries.items(), key=lambda item: -item[1])[:top]
    if trace is not None:
        _write_trace(prof, Path(trace))
    return Breakdown(seconds, wall / steps, top=[(name[:160], kind, spent / steps) for (kind, name), spent in ranked])


def _write_trace(prof: torch.profiler.profile, path: Path) -> None:
    """The profile as a gzip'd Chrome trace, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = Path(f"{path}.part")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(raw))
            with open(raw, "rb") as src, gzip.open(part, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
