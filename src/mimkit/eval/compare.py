"""`mimkit compare`: the matrix {pretrained models} x {knn, linprobe, finetune} x {tasks}, resumable.

Each cell is its own run directory under OUT/cells/. A cell whose results.json exists, written for the same
config, is not run again. An interrupted fine-tuning cell resumes from its checkpoint. The tables are rebuilt from
every finished cell: results.csv, results.json and results.md, with the papers' frozen-vs-fine-tuned table.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mimkit.config import Config, ConfigError, load_config
from mimkit.engine.atomic import atomic_write_text

PROTOCOLS = ("knn", "linprobe", "finetune")
RECIPES = {"knn": "probe_fmnist", "linprobe": "probe_fmnist", "finetune": "finetune_fmnist_tiny"}
# Classification is the semantic task every labelled data set provides; the others are geometric (data/tasks.py).
TASKS = ("classification", "localization", "rotation", "combined")
# The number each task is judged by, and whether higher is better.
PRIMARY = {
    "classification": ("top1", True),
    "localization": ("mean_iou", True),
    "rotation": ("angle_error", False),
    "combined": ("ap50", True),
}


@dataclass
class Cell:
    model: str
    source: str
    protocol: str
    task: str

    @property
    def name(self) -> str:
        return f"{self.model}__{self.protocol}__{self.task}"


def model_name(spec: str) -> str:
    """`NAME=SOURCE` names a source explicitly; otherwise a name is derived from it."""
    if "=" in spec and not Path(spec).exists():
        return spec.split("=", 1)[0]
    base = spec.rstrip("/").split("/")[-1].replace(".safetensors", "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base) or "model"


def source_of(spec: str) -> str:
    return spec.split("=", 1)[1] if "=" in spec and not Path(spec).exists() else spec


def cell_config(cell: Cell, overrides: list[str], protocol_overrides: dict[str, list[str]]) -> Config:
    """Classification: knn / linprobe / finetune as usual. Geometric tasks: a linear head on the frozen encoder
    ('linprobe') or the whole network fine-tuned ('finetune'), both trained by the Engine."""
    sets = [f"init={cell.source}", *overrides, *protocol_overrides.get(cell.protocol, [])]
    if cell.task != "classification":
        frozen = "true" if cell.protocol == "linprobe" else "false"
        task_sets = [
            f"init={cell.source}",
            "method.name=task",
            f"data.task={cell.task}",
            f"model.freeze={frozen}",
            *overrides,
            *protocol_overrides.get("finetune", []),
        ]
        return load_config(RECIPES["finetune"], task_sets)
    if cell.protocol == "finetune":
        sets.insert(1, "method.name=supervised")
    return load_config(RECIPES[cell.protocol], sets)


def config_hash(cfg: Config) -> str:
    return hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def run_cell(cell: Cell, cfg: Config, run_dir: Path) -> dict[str, Any]:
    metric = PRIMARY[cell.task][0]
    if cell.task != "classification":
        from mimkit.pretrain import pretrain

        res = pretrain(cfg, run_dir)
        return {"metric": metric, "value": res[f"final_heldout_{metric}"]}
    if cell.protocol == "knn":
        from mimkit.eval.knn import knn_eval

        res = knn_eval(cfg, run_dir)
        return {"metric": metric, "value": res["top1"], "top1": res["top1"], "top5": res["top5"]}
    if cell.protocol == "linprobe":
        from mimkit.eval.linprobe import linprobe

        res = linprobe(cfg, run_dir)
        return {
            "metric": metric,
            "value": res["top1"],
            "top1": res["top1"],
            "top5": res["top5"],
            "best_top1": res["best_top1"],
        }
    from mimkit.pretrain import pretrain

    res = pretrain(cfg, run_dir)
    return {
        "metric": metric,
        "value": res["final_heldout_top1"],
        "top1": res["final_heldout_top1"],
        "top5": res["final_heldout_top5"],
        "best_top1": res["best_heldout_top1"],
    }


def compare(
    inits: list[str],
    out: str | Path,
    protocols: list[str] | None = None,
    overrides: list[str] | None = None,
    protocol_overrides: dict[str, list[str]] | None = None,
    tasks: list[str] | None = None,
    log=print,
) -> list[dict[str, Any]]:
    out = Path(out)
    protocols = protocols or list(PROTOCOLS)
    tasks = tasks or ["classification"]
    unknown = sorted(set(protocols) - set(PROTOCOLS)) + sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ConfigError(f"unknown protocol or task {unknown}: protocols {PROTOCOLS}, tasks {TASKS}")
    names = [model_name(s) for s in inits]
    if len(set(names)) != len(names):
        raise ConfigError(f"two --init sources share the name {names}; name them as NAME=SOURCE")
    cells = [
        Cell(n, source_of(s), p, t)
        for n, s in zip(names, inits)
        for t in tasks
        for p in protocols
        if not (t != "classification" and p == "knn")
    ]  # kNN is a classifier: no geometric kNN cells
    rows = []
    for i, cell in enumerate(cells, 1):
        cfg = cell_config(cell, overrides or [], protocol_overrides or {})
        run_dir = out / "cells" / cell.name
        marker = run_dir / "cell.json"
        key = config_hash(cfg)
        if marker.is_file() and json.loads(marker.read_text()).get("config_hash") == key:
            row = json.loads(marker.read_text())["row"]
            log(f"[compare] {i}/{len(cells)} {cell.name}: done before, skipped")
        else:
            log(f"[compare] {i}/{len(cells)} {cell.name}: running")
            metrics = run_cell(cell, cfg, run_dir)
            row = {"model": cell.model, "source": cell.source, "protocol": cell.protocol, "task": cell.task, **metrics}
            atomic_write_text(marker, json.dumps({"config_hash": key, "row": row}, indent=1))
        rows.append(row)
        write_tables(rows, out)
    return rows


def write_tables(rows: list[dict[str, Any]], out: Path) -> None:
    fields = ["model", "source", "protocol", "task", "metric", "value", "top1", "top5", "best_top1"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buffer.getvalue())
    atomic_write_text(out / "results.json", json.dumps(rows, indent=1))
    atomic_write_text(out / "results.md", markdown_table(rows))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Two tables: frozen (kNN, linear probe) vs fine-tuned classification top-1, and each task's primary metric
    frozen vs fine-tuned (semantic vs geometric)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    lookup = {(r["model"], r["task"], r["protocol"]): r for r in rows}

    def cell(model: str, task: str, protocol: str) -> str:
        row = lookup.get((model, task, protocol))
        return f"{row['value']:.3f}" if row and row.get("value") is not None else ""

    protocols = [p for p in PROTOCOLS if (p, "classification") in {(r["protocol"], r["task"]) for r in rows}]
    lines = [
        "# Frozen vs fine-tuned: classification top-1 (%)",
        "",
        "| model | " + " | ".join(protocols) + " |",
        "|---|" + "---|" * len(protocols),
    ]
    lines += [f"| {m} | " + " | ".join(cell(m, "classification", p) for p in protocols) + " |" for m in models]
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    columns = [
        (t, p)
        for t in tasks
        for p in ("linprobe", "finetune")
        if any(r["task"] == t and r["protocol"] == p for r in rows)
    ]
    if columns:
        header = [
            f"{t} {PRIMARY[t][0]} ({'higher' if PRIMARY[t][1] else 'lower'} is better), "
            f"{'frozen' if p == 'linprobe' else 'fine-tuned'}"
            for t, p in columns
        ]
        lines += [
            "",
            "# Semantic vs geometric tasks",
            "",
            "| model | " + " | ".join(header) + " |",
            "|---|" + "---|" * len(columns),
        ]
        lines += [f"| {m} | " + " | ".join(cell(m, t, p) for t, p in columns) + " |" for m in models]
    return "\n".join(lines) + "\n"
