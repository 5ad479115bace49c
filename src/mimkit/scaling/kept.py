"""Held-out loss against transfer along one pretraining run: every checkpoint a run kept (train.keep_every) that a
`mimkit compare` evaluated becomes a results.csv row, so `mimkit scaling analyze` asks the data-scaling paper's
question (does the held-out loss track fine-tuning?) of the training length inside a run. A sweep of separate
lengths costs one pretraining per length; kept checkpoints cost one. They are not the same experiment: a kept
checkpoint is taken mid-schedule (learning rate not yet annealed), so its loss is higher than a run of that length
would end at; docs/fidelity.md names the departure."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Callable

import yaml

from mimkit.config import config_from_dict
from mimkit.engine.checkpoint import step_of
from mimkit.engine.metrics import read_metrics
from mimkit.errors import ConfigError
from mimkit.scaling.record import curves_of, encoder_params, training_flops_per_image, write_results


def parse_run_spec(spec: str) -> tuple[Path, str | None]:
    """`RUN_DIR` or `RUN_DIR=FINAL_NAME` (the compare model name under which the run's final encoder was evaluated,
    e.g. an exported .safetensors: its path does not say which run it came from)."""
    run, sep, final = spec.partition("=")
    if sep and not final:
        raise ConfigError(f"'{spec}': give the final encoder's compare model name after '=', or leave '=' out")
    return Path(run), final or None


def compare_scores(compare_dir: Path, protocol: str, task: str = "classification") -> dict[str, dict[str, Any]]:
    """Model name -> {source, top1 (mean over seeds), seeds} of a compare's results.csv (models only, no baselines)."""
    path = compare_dir / "results.csv"
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `mimkit compare --out {compare_dir}` first")
    scores: dict[str, dict[str, Any]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["protocol"] != protocol or row["task"] != task or row["baseline"] == "True" or not row["top1"]:
                continue
            entry = scores.setdefault(row["model"], {"source": row["source"], "values": []})
            entry["values"].append(float(row["top1"]))
    return {
        name: {
            "source": e["source"],
            "top1": mean(e["values"]),
            "std": stdev(e["values"]) if len(e["values"]) > 1 else 0.0,
            "seeds": len(e["values"]),
        }
        for name, e in scores.items()
    }


def kept_step(source: str, run_dir: Path) -> int | None:
    """The step of `source` when it is one of the run's checkpoint folders: the same folder where it exists here,
    else (compared from another directory or machine, or pruned since) a path ending in the run's last three folder
    names, checkpoints, step-N (two studies' `pre-s1/mae` runs differ in the third)."""
    path = Path(source)
    step = step_of(path)
    if step is None or path.parent.name != "checkpoints":
        return None
    if path.exists():
        return step if path.resolve().parent == (run_dir / "checkpoints").resolve() else None
    return step if path.parts[-5:-2] == run_dir.resolve().parts[-3:] else None


def eval_before(records: list[dict[str, Any]], split: str, step: int, within: int) -> tuple[int, float] | None:
    """(step, loss) of the last `split` evaluation at or before `step` and no more than `within` steps earlier."""
    found = None
    for r in records:
        at = r.get("step")
        if r.get("event") == "eval" and r.get("split") == split and r.get("loss") is not None and at is not None:
            if step - within <= at <= step and (found is None or at >= found[0]):
                found = (int(at), float(r["loss"]))
    return found


def kept_records(run_dir: Path, compare_dir: Path, final: str | None = None, protocol: str = "finetune") -> list[dict]:
    """One record per checkpoint of `run_dir` that `compare_dir` scored under `protocol`: the sweep's results.csv
    columns with iterations = the checkpoint's step and heldout_loss = the run's fixed-mask evaluation at that step,
    or the last one before it when keep_every is not a multiple of eval_every (the record's heldout_step says
    which). The run's curves ride on its last record."""
    for name in ("config.yaml", "metrics.jsonl"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir / name} not found: give a pretraining run directory (mimkit pretrain --out)")
    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    metrics = read_metrics(run_dir / "metrics.jsonl")
    scores = compare_scores(compare_dir, protocol)
    steps: dict[int, str] = {}

    def claim(step: int, name: str) -> None:
        if step in steps:
            raise ConfigError(
                f"'{steps[step]}' and '{name}' in {compare_dir} are both step {step} of {run_dir}: score it once"
            )
        steps[step] = name

    for name, score in scores.items():
        step = kept_step(score["source"], run_dir)
        if step is not None and name != final:
            claim(step, name)
    if final is not None:
        if final not in scores:
            known = ", ".join(sorted(scores)) or "none"
            raise ConfigError(f"'{final}' has no {protocol} score in {compare_dir} (models there: {known})")
        if "step" not in results:
            raise ConfigError(f"{results_path} not found: '{final}' is the final encoder of a run that has not ended")
        claim(int(results["step"]), final)
    if not steps:
        raise ConfigError(
            f"no {protocol} score in {compare_dir} comes from {run_dir}: compare its checkpoint folders "
            f"({run_dir}/checkpoints/step-N) or name its final encoder ({run_dir}=MODEL)"
        )
    t = cfg.train
    flops = training_flops_per_image(cfg)
    images = results.get("train_images")
    records = []
    for step in sorted(steps):
        heldout = eval_before(metrics, "heldout", step, within=t.eval_every - 1)
        if heldout is None:
            raise ConfigError(
                f"{run_dir} has no held-out evaluation in the {t.eval_every} steps up to step {step} "
                f"('{steps[step]}'): evaluate while it trains (train.eval_every)"
            )
        train_fixed = eval_before(metrics, "train_fixed", heldout[0], within=0)
        seen = step * t.batch_size
        name = steps[step]
        row = {
            "run": name,
            "model": cfg.model.name,
            "params": encoder_params(cfg),
            "data": cfg.data.fraction,
            "data_images": images,
            "iterations": step,
            "batch_size": t.batch_size,
            "images_seen": seen,
            "epochs": seen / images if images else None,
            "seed": cfg.seed,
            "flops_per_image": flops,
            "compute": flops * seen,
            "heldout_loss": heldout[1],
            "best_heldout_loss": None,
            "train_loss": train_fixed[1] if train_fixed else None,
            "finetune_top1": scores[name]["top1"],
            "finetune_std": scores[name]["std"],
            "finetune_n": scores[name]["seeds"],
            "pretrain_seconds": None,
            "run_dir": str(run_dir),
            "method": cfg.method.name,
            "transfer_protocol": protocol,
        }
        records.append({"row": row, "curves": None, "heldout_step": heldout[0]})
    records[-1]["curves"] = curves_of(metrics, cfg, records[-1]["row"])
    return records


def merge_previous(out: Path, records: list[dict]) -> list[dict]:
    """`records` after the rows (and curves) of an earlier table in `out` that they do not replace (the same model
    name, or any row of a run read again): a table kept in the repository grows run by run, and a run whose
    directory is gone keeps its rows. A table of another transfer protocol is refused, not mixed in."""
    path = out / "results.csv"
    if not path.is_file():
        return records
    new = {r["row"]["run"] for r in records}
    reread = {r["row"]["run_dir"] for r in records}
    protocol = records[0]["row"]["transfer_protocol"] if records else None
    curves_path = out / "curves.json"
    curves = json.loads(curves_path.read_text()) if curves_path.is_file() else {}
    with open(path, newline="") as fh:
        previous = list(csv.DictReader(fh))
    theirs = {row.get("transfer_protocol") or "finetune" for row in previous}
    if protocol is not None and theirs - {protocol}:
        raise ConfigError(
            f"{path} holds {', '.join(sorted(theirs))} scores, these rows {protocol}: merge into a table of the same "
            "protocol (another --out)"
        )
    old = [row for row in previous if row.get("run") not in new and row.get("run_dir") not in reread]
    return [{"row": row, "curves": curves.get(row["run"])} for row in old] + records


def kept_table(
    specs: list[str],
    compare_dir: Path,
    out: Path,
    protocol: str = "finetune",
    merge: bool = False,
    say: Callable[[str], None] = print,
) -> Path:
    """`mimkit scaling kept`: the rows of every RUN[=FINAL] spec into OUT/results.csv (after an existing table's
    other rows with `merge`), each row said with its step, loss (and how far before the step it was measured)."""
    records = []
    for spec in specs:
        run_dir, final = parse_run_spec(spec)
        records += kept_records(run_dir, compare_dir, final=final, protocol=protocol)
    for r in records:
        row = r["row"]
        late = row["iterations"] - r["heldout_step"]
        where = f" (evaluated {late} steps earlier)" if late else ""
        say(
            f"{row['run']}: step {row['iterations']}, held-out loss {row['heldout_loss']:.4f}{where}, "
            f"{protocol} top-1 {row['finetune_top1']:.2f}"
        )
    table = merge_previous(out, records) if merge else records
    kept = len(table) - len(records)
    before = f" and {kept} kept from the table there" if kept else ""
    path = write_results(table, out)
    say(f"{path}: {len(records)} rows{before}; next: mimkit scaling analyze {path} --out DIR")
    return path
