"""Read a scaling results table: a sweep's results.csv or a published one (e.g. the SimMIM/SwinV2 model zoo).

Required columns: model, params, data (a fraction, a count or a name), iterations, heldout_loss. Optional:
finetune_top1, train_loss, data_images (data size, used to order and fit named data sets), compute (training FLOPs),
seed. Numbers may carry K/M/B/G suffixes (49M, 125K) and data may be a percentage (10%). Any other column that varies
(a sweep's extra grid axis, e.g. method.mask_ratio) splits the model into variants, "model [key=value]", so cells
are only ever averaged over seeds.
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from mimkit.errors import ConfigError

REQUIRED = ("model", "params", "data", "iterations", "heldout_loss")
# finetune_std / finetune_n: a row's own fine-tuning spread (`scaling kept`: a score averaged over transfer seeds)
OPTIONAL_NUMBERS = ("finetune_top1", "train_loss", "data_images", "compute", "finetune_std", "finetune_n")
# The columns a mimkit sweep writes to results.csv, in order; grid axes beyond model/data/length/seed follow them.
SWEEP_COLUMNS = [
    "run",
    "model",
    "params",
    "data",
    "data_images",
    "iterations",
    "batch_size",
    "images_seen",
    "epochs",
    "seed",
    "flops_per_image",
    "compute",
    "heldout_loss",
    "best_heldout_loss",
    "train_loss",
    "finetune_top1",
    "pretrain_seconds",
    "run_dir",
]
# What a table's finetune_top1 column measures, by its transfer_protocol column (`mimkit scaling kept --protocol`
# writes one; a sweep's table has none: its top-1 is fine-tuned)
TRANSFER_LABELS = {"finetune": "fine-tuned top-1", "linprobe": "linear-probe top-1", "knn": "kNN top-1"}
SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


@dataclass
class Point:
    """One (model, data, iterations) cell; seeds averaged (`n` runs, `heldout_std` across them: the sample std, as
    `mimkit compare` reports; extra holds finetune_std and finetune_n the same way)."""

    model: str
    params: float
    data: str  # as written
    data_size: float | None  # fraction, count or data_images; None for a name without a size
    iterations: float
    heldout_loss: float
    heldout_std: float = 0.0
    n: int = 1
    extra: dict[str, float | None] = field(default_factory=dict)  # finetune_top1, train_loss, compute

    def get(self, key: str) -> float | None:
        return self.extra.get(key)


def parse_number(text: str, column: str, line: int) -> float | None:
    """'49M' -> 4.9e7, '125K' -> 1.25e5, '10%' -> 0.1, '' -> None; anything else is an error naming the cell."""
    text = (text or "").strip()
    if not text:
        return None
    match = re.fullmatch(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([KMBGT%]?)", text, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"line {line}, column '{column}': '{text}' is not a number")
    value, suffix = float(match.group(1)), match.group(2).upper()
    value = value / 100 if suffix == "%" else value * SUFFIX[suffix]
    if not math.isfinite(value):
        raise ConfigError(f"line {line}, column '{column}': '{text}' is not finite")
    return value


def _data_size(text: str, line: int) -> float | None:
    try:
        return parse_number(text, "data", line)
    except ConfigError:
        return None  # a data set name (IN-22K): ordered by data_images when given, else by appearance


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows with numbers parsed; rows without a held-out loss (unfinished runs) are dropped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"results table '{path}' not found")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise ConfigError(
                f"{path}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
                f"the table has {', '.join(columns) or 'no header'}. Required: {', '.join(REQUIRED)}"
            )
        rows = []
        for line, raw in enumerate(reader, start=2):
            if None in raw:  # DictReader files surplus cells under None
                raise ConfigError(
                    f"{path}, line {line}: {len(columns) + len(raw[None])} cells but the header has "
                    f"{len(columns)} columns"
                )
            raw = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            loss = parse_number(raw["heldout_loss"], "heldout_loss", line)
            if loss is None:
                continue
            if not raw["model"]:
                raise ConfigError(f"line {line}: empty 'model'")
            row = {"model": raw["model"], "data": raw["data"], "heldout_loss": loss, "line": line, "cells": raw}
            for key in ("params", "iterations"):
                value = parse_number(raw[key], key, line)
                if value is None or value <= 0:
                    raise ConfigError(f"line {line}, column '{key}': needs a positive number, got '{raw[key]}'")
                row[key] = value
            for key in OPTIONAL_NUMBERS:
                row[key] = parse_number(raw.get(key, ""), key, line) if key in raw else None
            size = row["data_images"] if row["data_images"] is not None else _data_size(raw["data"], line)
            row["data_size"] = size
            rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no row has a held-out loss")
    _split_variants(rows, [c for c in columns if c not in SWEEP_COLUMNS and c not in OPTIONAL_NUMBERS])
    return rows


def _split_variants(rows: list[dict[str, Any]], extra: list[str]) -> None:
    """Append the values of varying extra columns to the model name (in place)."""
    varying = [c for c in extra if len({r["cells"].get(c, "") for r in rows}) > 1]
    for row in rows:
        if varying:
            row["model"] += " [" + ", ".join(f"{c}={row['cells'].get(c, '')}" for c in varying) + "]"


def aggregate(rows: list[dict[str, Any]]) -> list[Point]:
    """Average seeds: one Point per (model, data, iterations), in the table's order."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["data"], row["iterations"])].append(row)
    points = []
    for (model, data, iterations), group in groups.items():
        losses = [r["heldout_loss"] for r in group]
        extra = {}
        for key in ("finetune_top1", "train_loss", "compute"):
            values = [r[key] for r in group if r[key] is not None]
            extra[key] = mean(values) if values else None
            if key == "finetune_top1":
                extra["finetune_std"] = stdev(values) if len(values) > 1 else 0.0
                extra["finetune_n"] = len(values)
                if len(group) == 1 and group[0].get("finetune_n"):  # one row carrying its transfer seeds' spread
                    extra["finetune_std"] = group[0].get("finetune_std") or 0.0
                    extra["finetune_n"] = int(group[0]["finetune_n"])
        points.append(
            Point(
                model,
                mean(r["params"] for r in group),
                data,
                group[0]["data_size"],
                iterations,
                mean(losses),
                stdev(losses) if len(losses) > 1 else 0.0,
                len(group),
                extra,
            )
        )
    return points


def data_order(points: list[Point]) -> list[str]:
    """Data values from smallest to largest (by size; names without a size keep their order of appearance)."""
    first = {}
    for i, p in enumerate(points):
        first.setdefault(p.data, (p.data_size if p.data_size is not None else math.inf, i))
    return sorted(first, key=lambda d: first[d])


def model_order(points: list[Point]) -> list[str]:
    sizes = {}
    for p in points:
        sizes.setdefault(p.model, p.params)
    return sorted(sizes, key=lambda m: sizes[m])


def transfer_protocol(rows: list[dict[str, Any]]) -> str:
    """How the table's top-1 was measured: its transfer_protocol column (none: a sweep's fine-tuning), or "mixed"
    for a table that mixes protocols (they are split into variants, see _split_variants)."""
    protocols = {r["cells"].get("transfer_protocol", "") or "finetune" for r in rows}
    return protocols.pop() if len(protocols) == 1 else "mixed"


def transfer_label(protocol: str) -> str:
    return TRANSFER_LABELS.get(protocol, "transfer top-1" if protocol == "mixed" else f"{protocol} top-1")
