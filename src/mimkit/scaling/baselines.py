"""A scaling table next to what learns nothing and what learns without pretraining (`scaling analyze --baselines`).

Each model of the sweep gets a `mimkit compare` of its architecture from random initialisation (a model named
`scratch`), run with the sweep's fine-tuning recipe and labels: its summary.csv holds the random network fine-tuned
(the bar pretraining must clear to have helped), frozen (kNN, linear probe) and the baselines that learn nothing
(raw pixels, the majority class). A pretrained cell whose fine-tuned top-1 does not beat those is marked †: the
protocol, not pretraining, is what the number measures. Its difference to scratch is reported with the seed spread.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from mimkit.errors import ConfigError
from mimkit.eval.compare import best_baseline
from mimkit.eval.spread import mean_std, within_spread

SCRATCH = "scratch"
HOW_TO = (
    "make it with `mimkit compare --init scratch=scratch --set model.name=MODEL --protocols knn,linprobe,finetune "
    "--finetune-config RECIPE --seeds 3 --out DIR` and the sweep's fine-tuning settings"
)


def parse_specs(specs: list[str], models: list[str]) -> dict[str, Path]:
    """'MODEL=COMPARE_DIR' per sweep model -> {model: dir}; unknown models and missing directories are errors."""
    out: dict[str, Path] = {}
    for spec in specs:
        model, sep, folder = spec.partition("=")
        if not sep or not model or not folder:
            raise ConfigError(f"--baselines {spec}: expected MODEL=COMPARE_DIR (e.g. mim_vit_pico=runs/base-pico)")
        if model not in models:
            raise ConfigError(f"--baselines {spec}: '{model}' is not a model of the table ({', '.join(models)})")
        if model in out:
            raise ConfigError(f"--baselines: '{model}' given twice")
        out[model] = Path(folder)
    return out


def read_compare_summary(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """A compare's classification top-1 cells: {(model, protocol): {mean, std, n, baseline}}."""
    path = folder / "summary.csv"
    if not path.is_file():
        raise ConfigError(f"--baselines: no compare summary at {path}; {HOW_TO}")
    cells = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("task") != "classification" or row.get("metric") != "top1" or row.get("pool"):
                continue  # a pool (compare --pool) is no model of its own: never taken for scratch
            try:
                cell = {"mean": float(row["mean"]), "std": float(row["std"]), "n": int(row["n"])}
            except (KeyError, TypeError, ValueError) as err:
                raise ConfigError(f"{path}: a row without mean/std/n ({err}): is it a compare summary?") from None
            cells[(row["model"], row["protocol"])] = {**cell, "baseline": row.get("baseline") == "True"}
    if not any(k[0] == SCRATCH for k in cells):
        found = sorted({k[0] for k in cells}) or ["no classification rows"]
        raise ConfigError(f"{path}: no model named '{SCRATCH}' ({', '.join(found)}); {HOW_TO}")
    return cells


def load_baselines(specs: list[str], models: list[str]) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    return {model: read_compare_summary(folder) for model, folder in parse_specs(specs, models).items()}


def learns_nothing_bar(cells: dict[tuple[str, str], dict[str, Any]], protocol: str = "finetune") -> float | None:
    """The best baseline that learns nothing (raw pixels' kNN or linear probe, the majority class): fine-tuning can
    learn any of them, so a fine-tuned cell at or under it measures the protocol; a frozen protocol's bar is the
    baselines measured the same way (and the majority class), as `mimkit compare` draws it."""
    summary = [{"model": m, "task": "classification", "protocol": p, **c} for (m, p), c in cells.items()]
    best = best_baseline(summary, "classification", protocol)  # the one rule, shared with compare's tables
    return best["mean"] if best else None


def bars(baselines: dict[str, dict], protocol: str = "finetune") -> dict[str, dict[str, float | None]]:
    """Per model with baselines: the bar that learns nothing and the random network's mean, both under `protocol`
    (what a pretrained cell's score is read against)."""
    return {
        model: {
            "learns_nothing": learns_nothing_bar(cells, protocol),
            "scratch": (cells.get((SCRATCH, protocol)) or {}).get("mean"),
        }
        for model, cells in baselines.items()
    }


def results_markdown(
    cells: list[dict[str, Any]],
    baselines: dict[str, dict],
    transfer: str = "fine-tuned top-1",
    protocol: str = "finetune",
) -> str:
    """Per model: every (data, length) cell's held-out loss and fine-tuned top-1 (mean ± std over seeds), † where
    fine-tuning does not beat the best baseline that learns nothing, the difference to the same architecture
    fine-tuned from scratch (≈ when inside the seed spread); the model's baselines beneath."""
    lines: list[str] = []
    marked = close = False
    for model in dict.fromkeys(c["model"] for c in cells):
        rows = [c for c in cells if c["model"] == model]
        base = baselines.get(model, {})
        scratch = base.get((SCRATCH, protocol))
        bar = learns_nothing_bar(base, protocol)
        lines += [
            f"## {model} ({rows[0]['params'] / 1e6:.2f}M parameters)",
            "",
            f"| data | iterations | seeds | held-out loss | train-subset gap | {transfer} | vs scratch |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in rows:
            top1 = c.get("finetune_top1")
            gap = "" if c.get("train_loss") is None else f"{c['heldout_loss'] - c['train_loss']:+.4f}"
            tuned = vs = ""
            if top1 is not None:
                mine = {"mean": top1, "std": c.get("finetune_std") or 0.0, "n": c.get("finetune_n") or 1}
                tuned = mean_std(top1, mine["std"], mine["n"], 2)
                if bar is not None and top1 <= bar:
                    tuned += " †"
                    marked = True
                if scratch is not None:
                    diff = top1 - scratch["mean"]
                    vs = f"{diff:+.2f}"
                    if abs(diff) <= within_spread(mine, scratch):
                        vs += " ≈"
                        close = True
            loss = mean_std(c["heldout_loss"], c.get("heldout_std") or 0.0, c.get("seeds", 1), 4)
            lines.append(
                f"| {c['data']} | {c['iterations']:g} | {c.get('seeds', 1)} | {loss} | {gap} | {tuned} | {vs} |"
            )
        if base:
            lines += ["", f"Baselines for {model} (classification top-1, same labels and test split):", ""]
            lines += ["| baseline | protocol | top-1 |", "|---|---|---|"]
            for (name, how), cell in base.items():
                if cell["baseline"] or name == SCRATCH:  # a comparison's other models are not this table's baselines
                    what = f"*{name}*" if cell["baseline"] else "random init"
                    lines.append(f"| {what} | {how} | {mean_std(cell['mean'], cell['std'], cell['n'], 2)} |")
        lines.append("")
    if marked:
        lines.append(f"† {transfer} not above the best baseline that learns nothing: read the protocol first.")
    if close:
        lines.append(
            "≈ the difference to scratch is inside the larger seed spread (std; a one-seed cell is judged by "
            "scratch's): not a finding."
        )
    return "\n".join(lines).rstrip() + "\n"
