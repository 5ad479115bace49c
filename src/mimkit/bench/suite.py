"""`mimkit bench suite`: the whole performance table in one process on one device. For each workload (MAE and
SimMIM pretraining, TinyMIM-style distillation, fine-tuning, and a memory check) it times mimkit's own training step
(the Engine's step: clipping norm, non-finite guard, fused AdamW; with and without torch.compile, on synthetic
batches already on the device and on batches from mimkit's input pipeline) next to HuggingFace and plain timm
implementations of the same shape, and reports img/s, model-FLOPs utilisation against a measured matmul peak,
peak memory and the ratios the performance targets are stated in."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mimkit.bench import references as refs
from mimkit.bench.breakdown import KIND_NOTES, KINDS, Breakdown, flops_by_kind, profile_step
from mimkit.bench.flops import count_flops_by_op, flop_rate, matmul_peak_flops
from mimkit.bench.timing import sync, time_steps
from mimkit.config import COMPILE_MODES, Config, ConfigError, load_config, resolved
from mimkit.data.stream import Stream
from mimkit.engine.atomic import atomic_write_text
from mimkit.engine.distributed import DistEnv, pick_device
from mimkit.engine.host_malloc import host_malloc_state
from mimkit.engine.trainer import Engine, compile_model, resolve_precision

GROUPS = ("mae", "simmim", "distill", "finetune", "memory")

_COMMON = [
    "data.name=synthetic",
    "data.synthetic_size=512",
    "train.tensorboard=false",
    "train.log_every=1000000",
    "train.eval_every=1000000",
    "train.ckpt_every=1000000",
    "train.steps=1000000",
    "train.warmup_steps=0",
]
# What each workload trains, whatever the preset.
WORKLOADS: dict[str, list[str]] = {
    "mae": ["method.name=mae", "method.mask_ratio=0.75", "method.norm_pix=true"],
    "simmim": ["method.name=simmim", "method.mask_type=simmim", "method.mask_ratio=0.6"],
    "distill": ["method.name=distill"],
    "finetune": ["method.name=supervised", "method.mixup=0", "method.cutmix=0"],
    "memory": ["method.name=mae"],
}
# Shapes per preset: `tiny` is what this project's CPU tests and a laptop run; `vit-b16` the papers' ViT-B/16 at
# 224 px (the GPU table); the memory check is MAE ViT-L/16 at batch 256.
PRESETS: dict[str, dict[str, list[str]]] = {
    "tiny": {
        "common": ["data.img_size=32", "data.in_chans=1", "model.name=mim_vit_pico", "train.batch_size=128"],
        "simmim": ["method.mask_patch_size=8"],
        "distill": ["model.name=mim_vit_femto", "teacher=mim_vit_pico"],
        "finetune": ["model.num_classes=10"],
        "memory": ["model.name=mim_vit_nano"],
    },
    "vit-b16": {
        "common": [
            "data.img_size=224",
            "data.in_chans=3",
            "data.decode_size=256",
            "model.name=vit_base_patch16_224",
            "model.decoder_dim=512",
            "model.decoder_depth=8",
            "model.decoder_heads=16",
            "train.batch_size=256",
        ],
        "simmim": ["method.mask_patch_size=32"],
        "distill": ["model.name=vit_small_patch16_224", "teacher=vit_base_patch16_224"],
        "finetune": ["model.num_classes=1000"],
        "memory": ["model.name=vit_large_patch16_224"],
    },
}


@dataclass
class Row:
    group: str
    impl: str
    batch: int
    img_per_s: float
    step_ms: float
    flops_per_img: float | None = None
    mfu: float | None = None
    peak_memory_gb: float | None = None
    first_step_s: float | None = None  # includes compilation for compiled rows
    note: str = ""
    kind: str = "mimkit"
    spread: list[float] = field(default_factory=list)  # slowest and fastest pass (img/s) when timed in rounds
    # FLOPs of the model as the references compute it. Less is executed where mimkit skips work the loss does not
    # read (the last block at the tokens nothing reads: Method.fast_path); MFU counts only what is executed.
    model_flops_per_img: float | None = None
    # where a profiled step's time goes, per kind of work (mimkit.bench.breakdown.Breakdown.as_dict)
    breakdown: dict[str, Any] | None = None


@dataclass
class Timed:
    """A ready-to-time training step and what to release afterwards."""

    step: Callable[[], None]
    flops_per_img: float | None
    keep: list[Any] = field(default_factory=list)
    release: Callable[[], None] | None = None  # undo what the case changed outside itself (hooks)
    model_flops_per_img: float | None = None  # when the executed FLOPs are fewer than the model's (Row)
    flops_by_kind: dict[str, float] = field(default_factory=dict)  # executed FLOPs per image, per kind of work

    def close(self) -> None:
        if self.release is not None:
            self.release()
        self.keep.clear()


@dataclass
class Case:
    impl: str
    kind: str  # mimkit | pipeline (mimkit fed by its input pipeline) | loader (no model) | reference
    build: Callable[[], Timed]
    note: str = ""
    profiled: bool = True  # gets a time breakdown (not the loader rows, nor CUDA-graph replays)
    compiled: bool = False  # timed after the eager rows of its workload (compiling is the slow part of a run)


# inductor modes that replay CUDA graphs (torch._inductor.list_mode_options: triton.cudagraphs): not profiled
CUDA_GRAPHS = ("reduce-overhead", "max-autotune")


# ----------------------------------------------------------------------------------------------- configs
def group_config(
    preset: str, group: str, device: str, batch: int | None = None, extra: list[str] = ()
) -> tuple[Config, Config | None]:
    """The resolved config of one workload, and for distillation the teacher's. `extra`: KEY=VALUE overrides on top
    of the preset's (`teacher=NAME` picks the distillation teacher's architecture)."""
    spec = PRESETS[preset]
    overrides = [*_COMMON, *spec["common"], *WORKLOADS[group], *spec.get(group, []), *extra, f"device={device}"]
    teachers = [o.split("=", 1)[1] for o in overrides if o.startswith("teacher=")]
    teacher = teachers[-1] if teachers else None  # the last one given, as for any override
    overrides = [o for o in overrides if not o.startswith("teacher=")]
    if batch:
        overrides.append(f"train.batch_size={batch}")
    cfg = resolved(load_config(None, overrides))
    if teacher is None:
        return cfg, None
    return _with_teacher(cfg, teacher)


def _with_teacher(cfg: Config, teacher: str) -> tuple[Config, Config]:
    """TinyMIM's qk+vv setting with the teacher's architecture filled in (the teacher here is random: speed only)."""
    from mimkit.methods.distill import relation_heads

    plain = dataclasses.replace(
        cfg.model, name=teacher, embed_dim=None, depth=None, num_heads=None, patch_size=None, mlp_ratio=None
    )
    t_cfg = resolved(dataclasses.replace(cfg, model=plain, method=dataclasses.replace(cfg.method, name="mae")))
    m, t = cfg.model, t_cfg.model
    rel = relation_heads("reshape_student", m.embed_dim, m.num_heads, t.embed_dim, t.num_heads)
    dis = dataclasses.replace(
        cfg.distill,
        targets="qk+vv",
        head_match="reshape_student",
        teacher_embed_dim=t.embed_dim,
        teacher_num_heads=t.num_heads,
        teacher_depth=t.depth,
        teacher_relation_heads=t.num_heads,
        relation_heads=rel,
    )
    return dataclasses.replace(cfg, distill=dis), t_cfg


def build_teacher(teacher_cfg: Config, device: torch.device) -> nn.Module:
    from mimkit.models.encoder import create_encoder

    return create_encoder(teacher_cfg, fixed_sincos=True).to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------- timing
class FixedBatchStream:
    """A stream that hands out one batch already on the device (new sample keys each step, so masks change):
    the training step alone, without the input pipeline."""

    def __init__(self, cfg: Config, device: torch.device):
        b, d = cfg.train.batch_size // cfg.train.accum_steps, cfg.data
        gen = torch.Generator().manual_seed(cfg.seed)
        self.images = torch.randn(b, d.in_chans, d.img_size, d.img_size, generator=gen).to(device)
        self.labels = torch.randint(0, cfg.model.num_classes or 10, (b,), generator=gen).to(device)
        self.keys = torch.arange(b, device=device)
        self.batch = b

    def get(self, step: int, micro: int) -> dict[str, Any]:
        return {"images": self.images, "labels": self.labels, "keys": self.keys + step * self.batch}

    def epoch_of(self, step: int) -> int:
        return 0

    def close(self) -> None:
        """Nothing to stop: one tensor on the device."""


def _flops_per_image(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    params: list[nn.Parameter],
) -> tuple[float, dict[str, float]]:
    """FLOPs per image of a forward and backward pass, in all and per kind of work (counted on two images)."""
    n = 2
    by_op = count_flops_by_op(lambda: loss(images[:n], labels[:n]).backward())
    for p in params:
        p.grad = None
    return sum(by_op.values()) / n, {k: v / n for k, v in flops_by_kind(by_op).items()}


def pipeline_stream(cfg: Config, env: DistEnv) -> Stream:
    """The TrainStream `mimkit pretrain` would train from (synthetic uint8 images at data.decode_size)."""
    from mimkit.data.datasets import build_data
    from mimkit.training import build_stream

    return build_stream(cfg, build_data(cfg, lambda *_: None), env)


def loader_case(cfg: Config, device: torch.device) -> Timed:
    """The input pipeline alone: one augmented micro-batch per call."""
    stream = pipeline_stream(cfg, DistEnv(device=device))
    counter = {"step": 0}

    def step() -> None:
        stream.get(counter["step"], 0)
        counter["step"] += 1

    return Timed(step, None, [stream])


def mimkit_case(
    cfg: Config,
    device: torch.device,
    compiled: bool | str,
    pipeline: bool,
    run_dir: Path,
    teacher: nn.Module | None = None,
) -> Timed:
    """The Engine's own training step on this config (all accumulation micro-batches of one optimizer step)."""
    from mimkit.methods import build_method

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=compiled))
    env = DistEnv(device=device)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg)
    if teacher is not None:
        method.attach_teacher(teacher)
    fixed = FixedBatchStream(cfg, device)
    stream = pipeline_stream(cfg, env) if pipeline else fixed
    method.to(device)

    def count() -> tuple[float, dict[str, float]]:
        return _flops_per_image(
            lambda x, y: method({"images": x, "labels": y, "keys": fixed.keys[: len(x)]})["loss"],
            fixed.images,
            fixed.labels,
            list(method.parameters()),
        )

    flops, by_kind = count()
    model_flops = flops
    if method.fast_path:  # the same model's FLOPs on the plain path (the last block at every token)
        with method.plain_path():
            model_flops = count()[0]
    engine = Engine(cfg, run_dir, method, env, stream, {})
    counter = {"step": 0}

    def step() -> None:
        engine.train_step(counter["step"])
        counter["step"] += 1

    return Timed(step, flops, [engine, method], model_flops_per_img=model_flops, flops_by_kind=by_kind)


def reference_case(ref: refs.Reference, cfg: Config, device: torch.device, compiled: bool) -> Timed:
    """A plain training step on the whole train.batch_size (no accumulation): autocast forward, backward, fused
    AdamW, zero grads."""
    model = ref.model.to(device).train()
    fixed = FixedBatchStream(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, accum_steps=1)), device)
    flops, by_kind = _flops_per_image(
        lambda x, y: ref.loss(model, x, y), fixed.images, fixed.labels, list(model.parameters())
    )
    runner = compile_model(model, compiled, device)
    amp = resolve_precision(cfg.train.precision, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def step() -> None:
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            loss = ref.loss(runner, fixed.images, fixed.labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Timed(step, flops, [model, opt], getattr(model, "close", None), flops_by_kind=by_kind)


def _build_and_warm(case: Case, warmup: int, device: torch.device) -> tuple[Timed, float]:
    """Build a case and run its untimed steps; returns it and the first step's seconds (compilation included)."""
    timed = case.build()
    t0 = time.perf_counter()
    timed.step()
    sync(device)
    first = time.perf_counter() - t0
    time_steps(timed.step, 0, max(0, warmup - 1), device)
    return timed, first


class _Profiles:
    """Each case's time breakdown, kept from the fastest of its profiled windows (a slow spell of a shared machine
    only ever slows a window down), or why it has none."""

    def __init__(
        self, batch: int, steps: int, device: torch.device, peak: float, trace_dir: Path | None = None, group: str = ""
    ):
        self.batch, self.steps, self.device, self.peak = batch, steps, device, peak
        self.trace_dir, self.group = trace_dir, group
        self.best: dict[str, Breakdown] = {}
        self.failed: dict[str, str] = {}

    def trace_path(self, case: Case) -> Path | None:
        """Where the kept window's Chrome trace of a mimkit row goes (the references' are left out)."""
        if self.trace_dir is None or case.kind != "mimkit":
            return None
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{self.group} {case.impl}").strip("-").lower()
        return self.trace_dir / f"{slug}.json.gz"

    def window(self, case: Case, timed: Timed) -> None:
        if self.steps <= 0 or not case.profiled or case.impl in self.failed:
            return
        final = self.trace_path(case)
        trial = final.with_name(final.name + ".window") if final is not None else None
        try:
            found = profile_step(timed.step, self.steps, self.device, trace=trial)
        except Exception as err:  # a profiler that fails must not cost the timed row
            self.failed[case.impl] = f"breakdown failed: {type(err).__name__}: {err}"
            return
        kept = self.best.get(case.impl)
        if kept is None or found.step_seconds < kept.step_seconds:
            found.flops = {k: v * self.batch for k, v in timed.flops_by_kind.items()}
            self.best[case.impl] = found
            if trial is not None:
                os.replace(trial, final)
        elif trial is not None:
            trial.unlink()

    def of(self, case: Case, timed_step_seconds: float) -> tuple[dict[str, Any] | None, str]:
        """The kept breakdown, or None and why (a failure after a kept window leaves that window). On a GPU the
        kernels' times are set against the timed step (Breakdown.on_timed_step): the profiler's own host time
        would otherwise show as the device idling."""
        found = self.best.get(case.impl)
        if found is None:
            return None, self.failed.get(case.impl, "")
        if self.device.type == "cuda":
            found = found.on_timed_step(timed_step_seconds)
        return found.as_dict(self.peak), ""


def time_group(
    group: str,
    cases: list[Case],
    batch: int,
    steps: int,
    warmup: int,
    rounds: int,
    device: torch.device,
    peak: float,
    breakdown_steps: int = 0,
    trace_dir: Path | None = None,
    on_row: Callable[[Row], None] = lambda row: None,
    on_fail: Callable[[Case, Exception], None] | None = None,
) -> list[Row]:
    """Time a workload's cases. rounds == 1: each case is built, timed and released in turn, so its peak memory is
    its own (the GPU default). rounds > 1: all cases are built, then timed in `rounds` interleaved passes of
    steps / rounds; a row's img/s is the median pass, so slow spells of a shared machine hit every implementation
    alike (the CPU default). breakdown_steps > 0: after timing, each case runs that many steps under the profiler
    for its time breakdown (mimkit.bench.breakdown); in rounds, that many steps spread over the interleaved passes
    (at least one each), the fastest window kept. trace_dir: the kept windows' Chrome traces of mimkit's rows.
    on_row sees each row as soon as it is final: one by one without rounds (a run killed midway has printed the
    rows it finished), all at the end with them. A case that fails to build or step goes to on_fail and the others
    still run; without on_fail the error is raised."""
    rows: list[Row] = []
    if on_fail is None:

        def on_fail(case: Case, err: Exception) -> None:
            raise err

    def row(case: Case, timed: Timed, first: float, speeds: list[float], memory: float | None) -> Row:
        img_per_s = float(sorted(speeds)[len(speeds) // 2])
        flops = timed.flops_per_img
        found, failed = profiles.of(case, batch / img_per_s)
        note = "; ".join(n for n in (case.note, failed) if n)
        return Row(
            group,
            case.impl,
            batch,
            img_per_s,
            1000 * batch / img_per_s,
            flops,
            flops * img_per_s / peak if flops else None,
            memory,
            first,
            note,
            case.kind,
            [min(speeds), max(speeds)],
            timed.model_flops_per_img or flops,
            found,
        )

    if rounds <= 1:
        profiles = _Profiles(batch, breakdown_steps, device, peak, trace_dir, group)
        for case in cases:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                timed, first = _build_and_warm(case, warmup, device)
                speed = steps * batch / time_steps(timed.step, steps, 0, device)
            except Exception as err:  # one broken row (a library version, out of memory) must not cost the rest
                on_fail(case, err)
                _release(device)
                continue
            memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            profiles.window(case, timed)
            rows.append(row(case, timed, first, [speed], memory))
            on_row(rows[-1])
            timed.close()
            _release(device)
        return rows
    built = []
    for case in cases:
        try:
            built.append((case, *_build_and_warm(case, warmup, device)))
        except Exception as err:
            on_fail(case, err)
    cases = [case for case, _, _ in built]
    chunk = max(1, steps // rounds)
    speeds: dict[str, list[float]] = {case.impl: [] for case in cases}
    for _ in range(rounds):
        for case, timed, _first in built:
            speeds[case.impl].append(chunk * batch / time_steps(timed.step, chunk, 0, device))
    profiles = _Profiles(
        batch, max(1, breakdown_steps // rounds) if breakdown_steps else 0, device, peak, trace_dir, group
    )
    for _ in range(rounds if breakdown_steps else 0):
        for case, timed, _first in built:
            profiles.window(case, timed)
    rows = [row(case, timed, first, speeds[case.impl], None) for case, timed, first in built]
    for finished in rows:
        on_row(finished)
    for _, timed, _ in built:
        timed.close()
    _release(device)
    return rows


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- the suite
def suite_cases(
    preset: str,
    group: str,
    device: torch.device,
    compile_rows: bool,
    run_dir: Path,
    batch: int | None = None,
    compile_modes: tuple[str, ...] = (),
) -> tuple[int, list[Case]]:
    """(batch, cases) of one workload: the eager rows (mimkit's, then the references), then the compiled ones (one
    more per inductor mode in `compile_modes` for MAE and SimMIM, e.g. reduce-overhead = CUDA graphs), the input
    pipeline row last."""
    cfg, teacher_cfg = group_config(preset, group, device.type, batch)
    teacher = build_teacher(teacher_cfg, device) if teacher_cfg is not None else None
    note = f"teacher {teacher_cfg.model.name} (frozen, random), qk+vv" if teacher_cfg is not None else ""

    def mine(compiled: bool | str, pipeline: bool = False, config: Config = cfg) -> Callable[[], Timed]:
        return lambda: mimkit_case(config, device, compiled, pipeline, run_dir, teacher)

    def other(build: Callable[[], refs.Reference], compiled: bool = False) -> Callable[[], Timed]:
        return lambda: reference_case(build(), cfg, device, compiled)

    cases = [Case("mimkit", "mimkit", mine(False), note)]
    if compile_rows and group != "memory":
        cases.append(Case("mimkit compiled", "mimkit", mine(True), note, compiled=True))
    if group in ("mae", "simmim"):
        cases += [
            Case(
                f"mimkit compiled ({mode})", "mimkit", mine(mode), note, profiled=mode not in CUDA_GRAPHS, compiled=True
            )
            for mode in compile_modes
        ]
    if group == "mae":
        cases += [
            Case(
                "mimkit + input pipeline",
                "pipeline",
                mine(compile_rows, True),
                "uint8 images -> batched crop/flip/normalise on the device",
                profiled=False,
                compiled=compile_rows,
            ),
            Case("input pipeline alone", "loader", lambda: loader_case(cfg, device), "no model", profiled=False),
            Case("HF ViTMAEForPreTraining", "reference", other(lambda: _hf(refs.hf_mae, cfg))),
            Case("official-style (timm Blocks)", "reference", other(lambda: refs.official_mae(cfg))),
        ]
        if compile_rows:
            cases.append(
                Case("official-style compiled", "reference", other(lambda: refs.official_mae(cfg), True), compiled=True)
            )
    elif group == "simmim":
        cases += [
            Case("HF ViTForMaskedImageModeling", "reference", other(lambda: _hf(refs.hf_simmim, cfg))),
            Case("official-style (timm ViT)", "reference", other(lambda: refs.official_simmim(cfg))),
        ]
    elif group == "distill":
        cases.append(Case("plain timm", "reference", other(lambda: refs.plain_distill(cfg, teacher)), note))
    elif group == "finetune":
        cases += [
            Case("HF ViTForImageClassification", "reference", other(lambda: _hf(refs.hf_classifier, cfg))),
            Case("timm", "reference", other(lambda: refs.timm_classifier(cfg))),
        ]
    elif group == "memory":
        ckpt = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_checkpointing=True))
        cases.append(
            Case(
                "mimkit + activation checkpointing", "mimkit", mine(False, config=ckpt), "train.grad_checkpointing=true"
            )
        )
    # eager rows first, the pipeline row last: a run stopped at its time limit while compiling keeps the rows the
    # targets are stated in
    return cfg.train.batch_size, sorted(cases, key=lambda case: (case.compiled, case.kind == "pipeline"))


def _hf(builder: Callable[[Config], refs.Reference], cfg: Config) -> refs.Reference:
    try:
        return builder(cfg)
    except ImportError as err:
        raise RuntimeError("the HuggingFace rows need transformers (pip install transformers)") from err


def run_suite(
    preset: str | None = None,
    device: str = "auto",
    steps: int = 10,
    warmup: int = 3,
    groups: list[str] | None = None,
    compile_rows: bool | None = None,
    batch: int | None = None,
    rounds: int | None = None,
    compile_modes: tuple[str, ...] = (),
    breakdown_steps: int | None = None,
    trace_dir: str | Path | None = None,
    out: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time every workload of `preset` side by side; returns (and writes) the table, ratios, targets and, from
    `breakdown_steps` profiled steps per row (0: none; default 1 on CUDA, where a row's window is undisturbed and
    the profiler's processing costs seconds per step, 3 elsewhere), where each row's time goes; `trace_dir` keeps
    the profiled windows of mimkit's rows as Chrome traces."""
    dev = pick_device(device)
    preset = preset or ("vit-b16" if dev.type == "cuda" else "tiny")
    if preset not in PRESETS:
        raise ConfigError(f"unknown bench preset '{preset}' ({', '.join(PRESETS)})")
    if breakdown_steps is None:
        breakdown_steps = 1 if dev.type == "cuda" else 3
    if breakdown_steps < 0:
        raise ConfigError(f"--breakdown-steps must be 0 (no breakdown) or more, got {breakdown_steps}")
    if trace_dir is not None and breakdown_steps == 0:
        raise ConfigError("--trace-dir keeps the profiled windows: it needs --breakdown-steps of 1 or more")
    bad_modes = set(compile_modes) - set(COMPILE_MODES)
    if bad_modes:
        raise ConfigError(f"unknown compile mode(s) {sorted(bad_modes)}: choose from {', '.join(COMPILE_MODES)}")
    unknown = set(groups or []) - set(GROUPS)
    if unknown:
        raise ConfigError(f"unknown bench group(s) {sorted(unknown)}: choose from {', '.join(GROUPS)}")
    compile_rows = dev.type == "cuda" if compile_rows is None else compile_rows
    host_malloc = host_malloc_state()  # set by the CLI for every row alike ('default' from the Python API)
    rounds = rounds or (1 if dev.type == "cuda" else 5)
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        log(
            f"[bench] warning: the machine is busy (load average {load:.1f} on {os.cpu_count()} cores); other "
            "processes competing for the cores make CPU numbers noisy, ratios too"
        )
    amp = resolve_precision("auto", dev)
    peak_dtype = amp or torch.float32
    peak = matmul_peak_flops(dev, peak_dtype)
    log(f"[bench] {device_name(dev)}: {peak_dtype} matmul peak {flop_rate(peak)}")
    rows: list[Row] = []
    failed: list[dict[str, str]] = []

    def on_fail(group: str, case: Case, err: Exception) -> None:
        failed.append({"group": group, "impl": case.impl, "error": f"{type(err).__name__}: {err}"[:500]})
        log(f"[bench] {group:8s} {case.impl:34s} FAILED: {failed[-1]['error']}")

    with tempfile.TemporaryDirectory(prefix="mimkit-bench-") as tmp:
        for group in groups or list(GROUPS):
            group_batch, cases = suite_cases(
                preset, group, dev, compile_rows, Path(tmp) / group, batch, tuple(compile_modes)
            )
            n_steps, n_rounds = (min(steps, 3), 1) if group == "memory" else (steps, rounds)
            rows += time_group(
                group,
                cases,
                group_batch,
                n_steps,
                warmup,
                n_rounds,
                dev,
                peak,
                breakdown_steps,
                Path(trace_dir) if trace_dir is not None else None,
                on_row=lambda row: log(
                    f"[bench] {row.group:8s} {row.impl:34s} {row.img_per_s:10,.0f} img/s"
                    + (f"  MFU {100 * row.mfu:.1f}%" if row.mfu is not None else "")
                    + (f"  {row.peak_memory_gb:.1f} GB" if row.peak_memory_gb is not None else "")
                ),
                on_fail=lambda case, err, group=group: on_fail(group, case, err),
            )
    result = {
        "preset": preset,
        "device": device_name(dev),
        "versions": _versions(),
        "date": time.strftime("%Y-%m-%d"),
        "precision": str(amp or "fp32"),
        "threads": torch.get_num_threads(),
        "load_average": load,
        "steps": steps,
        "rounds": rounds,
        "warmup": warmup,
        "peak_flops": peak,
        "peak_dtype": str(peak_dtype),
        "host_malloc": host_malloc,
        "rows": [dataclasses.asdict(r) for r in rows],
        "failed": failed,
    }
    result["ratios"] = ratios(rows)
    result["targets"] = targets(result["ratios"], rows, dev.type, preset)
    if out:  # a directory, as every command's --out: nothing lands beside it
        out = Path(out)
        atomic_write_text(out / "results.json", json.dumps(result, indent=1))
        atomic_write_text(out / "report.md", markdown_report(result))
        result["written_to"] = str(out / "results.json")
        if any(r["breakdown"] for r in result["rows"]):
            from mimkit.viz.time_breakdown import plot_time_breakdown

            result["breakdown_figure"] = str(plot_time_breakdown(result, out / "breakdown.png"))
    return result


def _best(rows: list[Row], group: str, kind: str = "mimkit") -> Row | None:
    found = [r for r in rows if r.group == group and r.kind == kind]
    return max(found, key=lambda r: r.img_per_s) if found else None


def ratios(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Per workload: mimkit's fastest synthetic-batch row (and its input-pipeline row) over each reference."""
    out: dict[str, dict[str, float]] = {}
    for group in dict.fromkeys(r.group for r in rows):
        entry = {}
        for kind, label in (("mimkit", "mimkit"), ("pipeline", "mimkit + input pipeline")):
            mine = _best(rows, group, kind)
            for ref in (r for r in rows if r.group == group and r.kind == "reference"):
                if mine is not None:
                    entry[f"{label} / {ref.impl}"] = mine.img_per_s / ref.img_per_s
        if entry:
            out[group] = entry
    return out


def targets(ratio: dict[str, dict[str, float]], rows: list[Row], device_type: str, preset: str) -> list[dict[str, Any]]:
    """The performance issue's targets, checked against this run: the ViT-B/16 ones on CUDA, the tiny-preset one
    on a CPU (other combinations have none)."""
    wanted: list[tuple[str, str, float]] = []
    if (device_type == "cuda") != (preset == "vit-b16"):
        return []
    if device_type == "cuda":
        wanted = [
            ("mae", "mimkit / HF ViTMAEForPreTraining", 2.0),
            ("mae", "mimkit / official-style compiled", 1.4),
            ("mae", "mimkit + input pipeline / HF ViTMAEForPreTraining", 2.0),
            ("simmim", "mimkit / HF ViTForMaskedImageModeling", 1.5),
        ]
    else:
        wanted = [
            ("mae", "mimkit / HF ViTMAEForPreTraining", 1.2),
            ("simmim", "mimkit / HF ViTForMaskedImageModeling", 1.2),
        ]
    out = []
    for group, key, need in wanted:
        got = ratio.get(group, {}).get(key)
        if got is not None:
            out.append({"what": f"{group}: {key}", "need": need, "got": got, "met": got >= need})
    mae = _best(rows, "mae")
    if device_type == "cuda" and mae is not None and mae.mfu is not None:
        out.append({"what": "mae: mimkit model-FLOPs utilisation", "need": 0.5, "got": mae.mfu, "met": mae.mfu >= 0.5})
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def _versions() -> dict[str, str]:
    import timm

    versions = {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:
        pass
    return versions


def _gflops(row: dict[str, Any]) -> str:
    """Executed GFLOP per image, and the model's after a slash where mimkit executes fewer."""
    executed, model = row["flops_per_img"], row.get("model_flops_per_img")
    if not executed:
        return "-"
    if model and abs(model - executed) > 1e-3 * model:
        return f"{executed / 1e9:.4g} / {model / 1e9:.4g}"
    return f"{executed / 1e9:.4g}"


HEADER = ["workload", "implementation", "batch", "img/s", "ms/step", "GFLOP/img", "MFU", "peak GB", "1st step s"]


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["group"],
        row["impl"],
        str(row["batch"]),
        f"{row['img_per_s']:,.0f}",
        f"{row['step_ms']:.1f}",
        _gflops(row),
        f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "-",
        f"{row['peak_memory_gb']:.1f}" if row["peak_memory_gb"] is not None else "-",
        f"{row['first_step_s']:.1f}",
    ]


def _summary_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        f"{group}: " + ", ".join(f"{k} {v:.2f}x" for k, v in entry.items()) for group, entry in result["ratios"].items()
    ]
    return (
        lines
        + [
            f"target {t['what']} >= {t['need']}: {t['got']:.2f} {'MET' if t['met'] else 'NOT MET'}"
            for t in result["targets"]
        ]
        + [f"FAILED {f['group']} {f['impl']}: {f['error']}" for f in result.get("failed", [])]
    )


def breakdown_table(result: dict[str, Any]) -> list[list[str]]:
    """Header and one line per profiled row: each kind's share of the step (matmul and attention with their
    FLOP/s as a fraction of the peak after the @), and the profiled step's MFU. Empty when nothing was profiled."""
    rows = [r for r in result["rows"] if r.get("breakdown")]
    if not rows:
        return []
    kinds = [k for k in KINDS if k != "communication" or any(r["breakdown"]["shares"][k] for r in rows)]
    lines = [["workload", "implementation", *kinds, "MFU (profiled)"]]
    for r in rows:
        b = r["breakdown"]
        cells = [
            f"{100 * b['shares'][k]:.1f}%" + (f" @{100 * b['efficiency'][k]:.0f}%" if k in b["efficiency"] else "")
            for k in kinds
        ]
        lines.append([r["group"], r["impl"], *cells, f"{100 * b['gap']['useful']:.1f}%"])
    return lines


def aligned(lines: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = []
    for i, line in enumerate(lines):
        text.append(
            "  ".join(cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(line, widths)))
        )
        if i == 0:
            text.append("  ".join("-" * w for w in widths))
    return text


BREAKDOWN_NOTE = (
    "Where the time goes: each kind of work's share of a profiled step (on a GPU, the kernels' times "
    "set against the timed step, since the profiler slows the host only); @ is that kind's FLOP/s as a "
    "fraction of the matmul peak. What keeps MFU from 100%: matmul and attention below the peak, and "
    "all the time of the other kinds."
)


def format_table(result: dict[str, Any]) -> str:
    """The suite as a plain-text table (what the CLI prints), then the time breakdown."""
    text = [
        f"{result['device']} | {result['precision']} | " + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    ]
    text += aligned([HEADER] + [_cells(r) for r in result["rows"]])
    return "\n".join(text + breakdown_lines(result) + _summary_lines(result))


def breakdown_lines(result: dict[str, Any]) -> list[str]:
    """The time breakdown as plain-text lines after a blank one (none when nothing was profiled)."""
    parts = breakdown_table(result)
    return ["", BREAKDOWN_NOTE, *aligned(parts)] if parts else []


def markdown_report(result: dict[str, Any]) -> str:
    """The suite as a Markdown section, ready for docs/performance.md: what was run where, the table (with each
    row's slowest and fastest pass when timed in rounds), ratios and targets."""
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    spread = result["rounds"] > 1
    header = HEADER + (["spread img/s"] if spread else [])
    out = [
        f"## `mimkit bench suite`: {result['device']}, {result['date']}",
        "",
        f"Preset `{result['preset']}`, {result['precision']}, {result['threads']} threads, {result['steps']} timed "
        f"steps in {result['rounds']} round(s) after {result['warmup']} warm-up steps, load average "
        f"{result['load_average']:.1f}, host malloc {result.get('host_malloc', 'default')}. "
        f"{result['peak_dtype']} matmul peak {result['peak_flops'] / 1e12:.3g} TFLOP/s. Versions: {versions}. "
        "GFLOP/img: executed / model where they differ; MFU counts the executed FLOPs.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in result["rows"]:
        cells = _cells(row) + (
            [f"{row['spread'][0]:,.0f}-{row['spread'][1]:,.0f}" if row["spread"] else ""] if spread else []
        )
        out.append("| " + " | ".join(cells) + " |")
    out += [""] + [f"- {line}" for line in _summary_lines(result)]
    parts = breakdown_table(result)
    if parts:
        out += [
            "",
            BREAKDOWN_NOTE + " Kinds: " + "; ".join(f"*{k}*: {v}" for k, v in KIND_NOTES.items()) + ".",
            "",
            "| " + " | ".join(parts[0]) + " |",
            "|" + "---|" * len(parts[0]),
        ]
        out += ["| " + " | ".join(line) + " |" for line in parts[1:]]
    return "\n".join(out) + "\n"
