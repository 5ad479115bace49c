"""`mimkit bench pretrain`: img/s, peak memory and where the time goes (mimkit.bench.breakdown) of the Engine's
training step for any config, on synthetic batches already on the device; `--compare hf` times HuggingFace
ViTMAEForPreTraining of the same shape in the same process, so the ratio is measured on one machine in one run.
(`mimkit bench suite` is the whole table.)"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from mimkit.bench.flops import matmul_peak_flops
from mimkit.bench.references import hf_mae
from mimkit.bench.suite import Case, device_name, mimkit_case, reference_case, time_group
from mimkit.config import Config, ConfigError, resolved
from mimkit.engine.atomic import atomic_write_text
from mimkit.engine.distributed import pick_device
from mimkit.engine.trainer import resolve_precision

# the methods `--compare hf` can time against HuggingFace: method.name -> the reference model's builder
HF_REFERENCES = {"mae": hf_mae}


def _entry(row, measured_peak: bool) -> dict[str, Any]:
    memory = row.peak_memory_gb * 1024 if row.peak_memory_gb is not None else None
    entry = {
        "img_per_s": row.img_per_s,
        "step_ms": row.step_ms,
        "peak_memory_mb": memory,
        "gflop_per_img": row.flops_per_img / 1e9 if row.flops_per_img else None,
        "model_gflop_per_img": row.model_flops_per_img / 1e9 if row.model_flops_per_img else None,
    }
    if measured_peak:
        entry.update(mfu=row.mfu, breakdown=row.breakdown)
    return entry


def run_pretrain_bench(
    cfg: Config,
    steps: int = 20,
    warmup: int = 3,
    compare: str | None = None,
    breakdown_steps: int = 3,
    pipeline: bool = False,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Time the config's training step (and HF's with compare='hf'); with breakdown_steps > 0 also measure the
    matmul peak and profile that many steps, for MFU and where the time goes. pipeline=True also times the same
    step fed by the config's own data (`data.name`, e.g. WebDataset shards with `data.decode=device`) through
    mimkit's input pipeline, so the cost of feeding the step is one ratio measured in one process."""
    if breakdown_steps < 0:
        raise ConfigError(f"--breakdown-steps must be 0 (no breakdown) or more, got {breakdown_steps}")
    cfg = resolved(cfg)
    hf_reference = HF_REFERENCES.get(cfg.method.name)
    if compare == "hf" and hf_reference is None:
        raise ConfigError(
            f"--compare hf times HuggingFace's model of {', '.join(HF_REFERENCES)}; method.name="
            f"{cfg.method.name} has none (use an MAE config)"
        )
    device = pick_device(cfg.device)
    amp = resolve_precision(cfg.train.precision, device)
    batch = cfg.train.batch_size
    results: dict[str, Any] = {
        "config": {
            "method": cfg.method.name,
            "model": cfg.model.name,
            "img_size": cfg.data.img_size,
            "patch_size": cfg.model.patch_size,
            "batch": batch,
            "precision": str(amp or "fp32"),
            "compile": cfg.train.compile,
        },
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
    }
    peak = matmul_peak_flops(device, amp or torch.float32) if breakdown_steps else float("inf")  # inf: no MFU
    if breakdown_steps:
        results["peak_flops"] = peak
    with tempfile.TemporaryDirectory(prefix="mimkit-bench-") as tmp:
        cases = [Case("mimkit", "mimkit", lambda: mimkit_case(cfg, device, cfg.train.compile, False, Path(tmp)))]
        if pipeline:
            # profiled too: the breakdown shows the decoding kernels and the device waiting for the next batch
            cases.append(
                Case("pipeline", "pipeline", lambda: mimkit_case(cfg, device, cfg.train.compile, True, Path(tmp)))
            )
        if compare == "hf":
            cases.append(Case("hf", "reference", lambda: reference_case(hf_reference(cfg), cfg, device, False)))
        rows = time_group("pretrain", cases, batch, steps, warmup, 1, device, peak, breakdown_steps)
    for case, row in zip(cases, rows):
        results[case.impl] = _entry(row, bool(breakdown_steps) and case.profiled)
    if pipeline:
        results["pipeline"]["data"] = {
            "name": cfg.data.name,
            "decode": cfg.data.decode,
            "num_workers": cfg.data.num_workers,
        }
        results["ratio_pipeline_over_synthetic"] = results["pipeline"]["img_per_s"] / results["mimkit"]["img_per_s"]
    if compare == "hf":
        results["ratio_mimkit_over_hf"] = results["mimkit"]["img_per_s"] / results["hf"]["img_per_s"]
    if out:
        results["written_to"] = str(Path(out) / "results.json")  # --out is a directory, as for every command
        atomic_write_text(results["written_to"], json.dumps(results, indent=1))
    return results


def pretrain_summary(results: dict[str, Any]) -> list[str]:
    """What `mimkit bench pretrain` prints: one line per timed step, the ratios, where the time goes."""
    from mimkit.bench.suite import breakdown_lines

    c = results["config"]
    lines = [
        f"{c['method']} {c['model']} at {c['img_size']} px, batch {c['batch']}, {c['precision']}"
        f"{', compiled' if c['compile'] else ''} on {results['device']} ({results['steps']} timed steps)"
    ]
    names = {"mimkit": "mimkit (batches on the device)", "pipeline": "mimkit + input pipeline", "hf": "HuggingFace"}
    for impl, name in names.items():
        if impl in results:
            row = results[impl]
            line = f"  {name:32s} {row['img_per_s']:10,.0f} img/s  {row['step_ms']:8.1f} ms/step"
            if row.get("peak_memory_mb") is not None:
                line += f"  peak {row['peak_memory_mb'] / 1024:.1f} GB"
            if row.get("mfu") is not None:
                line += f"  MFU {row['mfu']:.1%}"
            lines.append(line)
    for key, label in (("ratio_mimkit_over_hf", "mimkit / HF"), ("ratio_pipeline_over_synthetic", "pipeline / alone")):
        if key in results:
            lines.append(f"  {label:32s} {results[key]:.2f}x")
    impls = [impl for impl in names if impl in results and results[impl].get("breakdown")]
    rows = [{"group": "pretrain", "impl": impl, "breakdown": results[impl]["breakdown"]} for impl in impls]
    return lines + (breakdown_lines({"rows": rows}) if rows else [])
