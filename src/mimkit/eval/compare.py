"""`mimkit compare`: the matrix {pretrained models} x {knn, linprobe, finetune} x {tasks}, resumable.

Each cell is its own run directory under OUT/cells/. A cell whose results.json exists, written for the same
config, is not run again. An interrupted fine-tuning cell resumes from its checkpoint. The tables are rebuilt from
every finished cell: results.csv, results.json and results.md, with the papers' frozen-vs-fine-tuned table,
and compare.png, the same numbers drawn against the best baseline that learns nothing.
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
from mimkit.config.length import with_length
from mimkit.data.options import COMBINED_TASKS
from mimkit.engine.atomic import atomic_write_text
from mimkit.eval.contrasts import check_names, contrast_rows, contrasts_csv, contrasts_markdown
from mimkit.eval.options import PIXELS
from mimkit.eval.pools import Pool, check_pools, pool_notes, pool_sizes, pooled_rows
from mimkit.eval.spread import DECIMALS, PRIMARY, mean_std, spread, within_spread

PROTOCOLS = ("knn", "linprobe", "finetune")
# Each protocol's recipe unless compare(recipes=...) (`--finetune-config` / `--probe-config`) names another: the
# geometric tasks' cells, frozen or not, start from the fine-tuning recipe (they train a head with the Engine).
RECIPES = {"knn": "probe_fmnist", "linprobe": "probe_fmnist", "finetune": "finetune_fmnist_tiny"}


def protocol_recipes(finetune: str | None = None, probe: str | None = None) -> dict[str, str]:
    """RECIPES with the fine-tuning and the probes' (kNN and linear probe) recipe replaced where given."""
    out = dict(RECIPES)
    if finetune:
        out["finetune"] = finetune
    if probe:
        out["knn"] = out["linprobe"] = probe
    return out


# Classification is the semantic task every labelled data set provides; the others are geometric (data/tasks.py).
TASKS = (
    "classification",
    "localization",
    "cluttered_localization",
    "keypoints",
    "rotation",
    "combined",
    "cluttered_combined",
    "depth",
    "tracking",
)
# Baselines that learn nothing (eval/baselines.py), added to every comparison unless turned off.
BASELINES = ("pixels", "random", "trivial")
BASELINE_NOTES = {
    "pixels": "kNN and the linear probe on the raw pixels the encoders receive",
    "random": "a frozen, randomly initialised encoder of the compared models' architecture",
    "trivial": "one constant prediction from the training labels: majority class, mean box, median angle, mean "
    "keypoints, mean depth map, zero displacement",
}


@dataclass
class Cell:
    model: str
    source: str
    protocol: str  # knn | linprobe | finetune | trivial
    task: str
    seed: int = 0
    baseline: bool = False

    @property
    def name(self) -> str:
        return f"{self.model}__{self.protocol}__{self.task}" + (f"__seed{self.seed}" if self.seed else "")


def model_name(spec: str) -> str:
    """`NAME=SOURCE` names a source explicitly; otherwise a name is derived from it."""
    if "=" in spec and not Path(spec).exists():
        return spec.split("=", 1)[0]
    base = spec.rstrip("/").split("/")[-1].replace(".safetensors", "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base) or "model"


def source_of(spec: str) -> str:
    return spec.split("=", 1)[1] if "=" in spec and not Path(spec).exists() else spec


def cell_config(
    cell: Cell,
    overrides: list[str],
    protocol_overrides: dict[str, list[str]],
    length: tuple[int | None, float | None] = (None, None),
    recipes: dict[str, str] | None = None,
) -> Config:
    """Classification: knn / linprobe / finetune as usual. Geometric tasks: a linear head on the frozen encoder
    ('linprobe') or the whole network fine-tuned ('finetune'), both trained by the Engine. The trivial predictor
    reads the data as the fine-tuning cells do (geometric tasks) or as the probes do (classification). `length`
    is (--steps, --epochs) for every cell that trains (config/length.py); the probe takes the epochs only.
    `recipes`: each protocol's recipe (protocol_recipes; default RECIPES)."""
    cfg = _cell_recipe(cell, overrides, protocol_overrides, recipes or RECIPES)
    steps, epochs = length
    if cell.protocol in ("trivial", "knn") or (steps is None and epochs is None):
        return cfg
    if cell.protocol == "linprobe" and cell.task == "classification":
        return cfg if epochs is None else with_length(cfg, epochs=epochs, probe=True)[0]
    return with_length(cfg, steps, epochs)[0]


def _cell_recipe(
    cell: Cell, overrides: list[str], protocol_overrides: dict[str, list[str]], recipes: dict[str, str]
) -> Config:
    seed = [f"seed={cell.seed}"]
    if cell.protocol == "trivial":
        recipe_protocol = "finetune" if cell.task != "classification" else "linprobe"
        return load_config(
            recipes[recipe_protocol],
            [f"data.task={cell.task}", *overrides, *protocol_overrides.get(recipe_protocol, []), *seed],
        )
    sets = [f"init={cell.source}", *overrides, *protocol_overrides.get(cell.protocol, []), *seed]
    if cell.task != "classification":
        frozen = "true" if cell.protocol == "linprobe" else "false"
        task_sets = [
            f"init={cell.source}",
            "method.name=task",
            f"data.task={cell.task}",
            f"model.freeze={frozen}",
            *overrides,
            *protocol_overrides.get("finetune", []),
            *seed,
        ]
        return load_config(recipes["finetune"], task_sets)
    if cell.protocol == "finetune":
        sets.insert(1, "method.name=supervised")
    return load_config(recipes[cell.protocol], sets)


# train.* keys that change where a cell's numbers are shown, never the numbers: a cell is not re-run for them
PRESENTATION_KEYS = ("loggers", "tensorboard", "wandb_project", "wandb_mode", "log_every")
# train.* keys added after cells were first recorded: a marker hashed before they existed still matches
ADDED_KEYS = ("loggers", "wandb_project", "wandb_mode")
# keys of other sections added later, oldest first, each addition with its defaults: at the default they leave a
# cell's numbers as they were before the key existed, so a marker hashed then (before the last 1, 2, ... additions)
# still matches; set to anything else, the cell runs again. A new key of a config section goes at the end.
ADDED_AT_DEFAULT: list[dict[str, dict[str, Any]]] = [
    {"probe": {"lr_grid": [], "val_fraction": 0.1}},
    {"method": {"fixed_masks": False}},
]


def config_hash(
    cfg: Config, dropped: tuple[str, ...] = PRESENTATION_KEYS, before_added: int = 0, by_content: bool = True
) -> str:
    """A cell's config as hashed today, or as it was hashed before the last `before_added` additions of
    ADDED_AT_DEFAULT (their keys left out where at their defaults), with init named by its spelling rather than its
    content when not `by_content`."""
    if not 0 <= before_added <= len(ADDED_AT_DEFAULT):
        raise ValueError(f"before_added={before_added}: 0 to {len(ADDED_AT_DEFAULT)} additions")
    tree = cfg.to_dict()
    tree["train"] = {k: v for k, v in tree["train"].items() if k not in dropped}
    if by_content:
        from mimkit.weights.identity import source_identity  # here: mimkit.weights imports torch (a fast --help)

        tree["init"] = source_identity(tree.get("init"))
    for addition in ADDED_AT_DEFAULT[len(ADDED_AT_DEFAULT) - before_added :] if before_added else []:
        for section, defaults in addition.items():
            tree[section] = {k: v for k, v in tree[section].items() if k not in defaults or v != defaults[k]}
    return hashlib.sha1(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]


def recorded_row(marker: Path, cfg: Config) -> dict[str, Any] | None:
    """A finished cell's row, when its marker was written for this config (as hashed now, before the added keys, or
    with a weights file named by its path rather than its content); None when the cell has to run. A marker
    accepted under an older hash is rewritten with today's, so it travels (keep / restore) as today's."""
    if not marker.is_file():
        return None
    recorded = json.loads(marker.read_text())
    eras = [
        (dropped, before, content)
        for dropped in (PRESENTATION_KEYS, ADDED_KEYS)
        for before in range(len(ADDED_AT_DEFAULT) + 1)
        for content in (True, False)
    ]
    if recorded.get("config_hash") not in {config_hash(cfg, *era) for era in eras}:
        return None
    today = config_hash(cfg)
    if recorded["config_hash"] != today:
        atomic_write_text(marker, json.dumps({**recorded, "config_hash": today}, indent=1))
    return recorded["row"]


def run_cell(cell: Cell, cfg: Config, run_dir: Path) -> dict[str, Any]:
    metric = PRIMARY[cell.task][0]
    if cell.protocol == "trivial":
        from mimkit.eval.baselines import trivial_baseline

        res = trivial_baseline(cfg, run_dir)
        return {"metric": metric, "value": res[metric], **{k: res[k] for k in ("top1", "threshold_iou") if k in res}}
    if cell.task != "classification":
        from mimkit.training import pretrain

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
    from mimkit.training import pretrain

    res = pretrain(cfg, run_dir)
    return {
        "metric": metric,
        "value": res["final_heldout_top1"],
        "top1": res["final_heldout_top1"],
        "top5": res["final_heldout_top5"],
        "best_top1": res["best_heldout_top1"],
    }


def plan_cells(
    models: list[tuple[str, str]],
    protocols: list[str],
    tasks: list[str],
    seeds: int,
    baselines: list[tuple[str, str]],
) -> list[Cell]:
    """Every (model, task, protocol, seed) that makes sense: kNN is a classifier (no geometric kNN cells); the
    baselines get the frozen protocols (pixels: classification only) and the trivial predictor one cell per task."""
    cells = [
        Cell(name, source, p, t, seed)
        for seed in range(seeds)
        for name, source in models
        for t in tasks
        for p in protocols
        if not (t != "classification" and p == "knn")
    ]
    for seed in range(seeds):
        for name, source in baselines:
            if name == "trivial":
                cells += [Cell(name, "", "trivial", t, seed, True) for t in tasks]
                continue
            for t in tasks:
                for p in ("knn", "linprobe"):
                    skip = (t != "classification" and (p == "knn" or source == "pixels")) or p not in protocols
                    if not skip:
                        cells.append(Cell(name, source, p, t, seed, True))
    return cells


def baseline_models(sources: list[str], cfg: Config, model_chosen: bool, log) -> list[tuple[str, str]]:
    """(name, source) of the baselines to add: raw pixels, a frozen random encoder in the models' architecture
    (unless a `scratch` model already plays that part, or the models disagree on architecture), the trivial
    predictor."""
    from mimkit.weights.sources import scratch_in_shared_architecture

    out = [("pixels", PIXELS)]
    if not any(s.startswith("scratch") for s in sources):
        try:
            random = scratch_in_shared_architecture([*sources, "scratch"], cfg, model_chosen, "compare")[-1]
            out.append(("random", random))
        except ConfigError as err:
            log(f"[compare] no random-encoder baseline: {err}")
    return [*out, ("trivial", "")]


def compare(
    inits: list[str],
    out: str | Path,
    protocols: list[str] | None = None,
    overrides: list[str] | None = None,
    protocol_overrides: dict[str, list[str]] | None = None,
    tasks: list[str] | None = None,
    log=print,
    seeds: int = 1,
    baselines: bool = True,
    length: tuple[int | None, float | None] = (None, None),
    recipes: dict[str, str] | None = None,
    lanes: int = 1,
    contrasts: list[tuple[str, str]] | None = None,
    pools: list[Pool] | None = None,
) -> list[dict[str, Any]]:
    """Run (or reuse) every cell and rebuild the tables. `seeds` repeats every cell with seed 0..N-1 (the
    evaluation's seed: head initialisation, data order, subsets, task draws); tables show mean +- std. `length`:
    (--steps, --epochs) of the cells that train. `recipes`: each protocol's recipe (protocol_recipes), e.g. a
    tuned fine-tuning schedule; a cell recorded under another recipe's settings runs again. `lanes`: cells run
    that many at a time, each in its own process with its share of the threads (eval/cell_lanes.py). `contrasts`:
    (A, B) model pairs whose paired differences the tables add (eval/contrasts.py). `pools`: (NAME, models) whose
    replicas the tables pool into one row (eval/pools.py); contrasts may name them."""
    recipes = recipes or RECIPES
    out = Path(out)
    protocols = protocols or list(PROTOCOLS)
    tasks = tasks or ["classification"]
    unknown = sorted(set(protocols) - set(PROTOCOLS)) + sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ConfigError(f"unknown protocol or task {unknown}: protocols {PROTOCOLS}, tasks {TASKS}")
    if seeds < 1:
        raise ConfigError(f"compare: --seeds {seeds} must be at least 1")
    if lanes < 1:
        raise ConfigError(f"compare: --lanes {lanes} must be at least 1")
    names = [model_name(s) for s in inits]
    if len(set(names)) != len(names):
        raise ConfigError(f"two --init sources share the name {names}; name them as NAME=SOURCE")
    taken = sorted(set(names) & set(BASELINES)) if baselines else []
    if taken:
        raise ConfigError(f"--init names {taken} are the baselines' own; rename those models (NAME=SOURCE)")
    overrides = overrides or []
    protocol_overrides = protocol_overrides or {}
    every_set = [*overrides, *(s for sets in protocol_overrides.values() for s in sets)]
    model_chosen = any(s.startswith("model.name=") for s in every_set)
    # every recipe loaded once, before any cell runs, so a wrong name answers at once
    loaded = {recipe: load_config(recipe, overrides) for recipe in dict.fromkeys(recipes.values())}
    shape_cfg = loaded[recipes["finetune"]]
    from mimkit.weights.sources import scratch_in_shared_architecture  # torch: after the config is known good

    sources = scratch_in_shared_architecture([source_of(s) for s in inits], shape_cfg, model_chosen, "compare")
    extra = baseline_models(sources, shape_cfg, model_chosen, log) if baselines else []
    contrasts, pools = contrasts or [], pools or []
    check_pools(pools, names, [name for name, _ in extra])
    check_names(contrasts, [*names, *(name for name, _ in extra), *(name for name, _ in pools)])
    cells = plan_cells(list(zip(names, sources)), protocols, tasks, seeds, extra)
    configs = [cell_config(cell, overrides, protocol_overrides, length, recipes) for cell in cells]
    if lanes > 1:
        rows = _run_in_lanes(cells, configs, out, lanes, log, contrasts, pools)
    else:
        rows = _run_in_order(cells, configs, out, log, contrasts, pools)
    for task in COMBINED_TASKS:  # the paper's classification vs localisation loss curves
        runs: dict[str, list[Path]] = {}
        for cell in cells:
            if cell.task == task and cell.protocol == "finetune":
                runs.setdefault(cell.model, []).append(out / "cells" / cell.name)
        if runs:
            from mimkit.eval.loss_curves import losses_markdown, plot_combined_losses

            plot_combined_losses(runs, out / f"{task}_losses.png", task)
            atomic_write_text(out / f"{task}_losses.md", losses_markdown(runs, task))
    return rows


def _record(cell: Cell, cfg: Config, metrics: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A finished cell's table row, written to its marker (cell.json) so a re-run skips it."""
    row = {
        "model": cell.model,
        "source": cell.source,
        "protocol": cell.protocol,
        "task": cell.task,
        "seed": cell.seed,
        "baseline": cell.baseline,
        **metrics,
    }
    atomic_write_text(run_dir / "cell.json", json.dumps({"config_hash": config_hash(cfg), "row": row}, indent=1))
    return row


def _run_in_order(
    cells: list[Cell], configs: list[Config], out: Path, log, contrasts: list[tuple[str, str]], pools: list[Pool]
) -> list[dict[str, Any]]:
    """One cell after another in this process, the tables rewritten after each."""
    rows, stale = [], False
    for i, (cell, cfg) in enumerate(zip(cells, configs), 1):
        run_dir = out / "cells" / cell.name
        row = recorded_row(run_dir / "cell.json", cfg)
        ran = row is None
        if not ran:
            log(f"[compare] {i}/{len(cells)} {cell.name}: done before, skipped")
        else:
            log(f"[compare] {i}/{len(cells)} {cell.name}: running")
            row = _record(cell, cfg, run_cell(cell, cfg, run_dir), run_dir)
        rows.append(row)
        write_tables(rows, out, figure=ran, contrasts=contrasts, pools=pools)  # redrawn when a cell's number is new
        stale = not ran  # skipped cells since the last drawing: drawn once at the end
    if stale:
        write_tables(rows, out, contrasts=contrasts, pools=pools)
    return rows


def _run_in_lanes(
    cells: list[Cell],
    configs: list[Config],
    out: Path,
    lanes: int,
    log,
    contrasts: list[tuple[str, str]],
    pools: list[Pool],
) -> list[dict[str, Any]]:
    """The cells not finished before, `lanes` at a time; the tables (in plan order) rewritten as each finishes."""
    from mimkit.eval.cell_lanes import run_in_lanes

    dirs = [out / "cells" / cell.name for cell in cells]
    rows: list[dict[str, Any] | None] = [recorded_row(d / "cell.json", f) for d, f in zip(dirs, configs)]
    todo = [(i, c, f, d) for i, (c, f, d, r) in enumerate(zip(cells, configs, dirs, rows)) if r is None]
    log(f"[compare] {len(cells) - len(todo)} of {len(cells)} cells done before, skipped")
    if len(todo) < len(cells):  # the finished cells' tables first, as one lane writes them on its way
        write_tables([r for r in rows if r is not None], out, contrasts=contrasts, pools=pools)
    for i, metrics in run_in_lanes(run_cell, todo, lanes, out, log) if todo else ():
        rows[i] = _record(cells[i], configs[i], metrics, dirs[i])
        write_tables([r for r in rows if r is not None], out, contrasts=contrasts, pools=pools)  # figure too
    return [r for r in rows if r is not None]


def tables_from_cells(
    out: str | Path, contrasts: list[tuple[str, str]] | None = None, pools: list[Pool] | None = None
) -> list[dict[str, Any]]:
    """Rebuild OUT's tables from every finished cell under OUT/cells, running nothing: for a comparison run in
    pieces (models or protocols added by later invocations, each of whose own tables shows only its cells). A cell
    still running (no marker yet) is left out; baselines come last, then by seed, models in name order."""
    out = Path(out)
    markers = sorted((out / "cells").glob("*/cell.json"))
    if not markers:
        raise ConfigError(f"compare --tables-only: no finished cell under {out / 'cells'} (each writes cell.json)")

    def not_a_marker(marker: Path, why: str) -> ConfigError:
        return ConfigError(
            f"compare --tables-only: {marker} is not a cell marker ({why}); delete it and run that cell again"
        )

    rows = []
    for marker in markers:
        try:
            row = dict(json.loads(marker.read_text())["row"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise not_a_marker(marker, f"{type(err).__name__}: {err}") from None
        missing = sorted({"model", "protocol", "task", "metric", "value"} - set(row))
        if missing:
            raise not_a_marker(marker, f"its row lacks {missing}")
        rows.append(row)
    rows.sort(key=lambda r: (bool(r.get("baseline")), int(r.get("seed") or 0)))
    models = list(dict.fromkeys(r["model"] for r in rows if not r.get("baseline")))
    base = list(dict.fromkeys(r["model"] for r in rows if r.get("baseline")))
    check_pools(pools or [], models, base)
    check_names(contrasts or [], [*models, *base, *(name for name, _ in pools or [])])
    write_tables(rows, out, contrasts=contrasts, pools=pools)
    return rows


def write_tables(
    rows: list[dict[str, Any]],
    out: Path,
    figure: bool = True,
    contrasts: list[tuple[str, str]] | None = None,
    pools: list[Pool] | None = None,
) -> None:
    """results.csv, results.json, summary.csv and results.md from the rows; compare.png too unless figure=False;
    with `contrasts`, their table in results.md, contrasts.csv and contrasts.png (without, an earlier one's are
    removed); with `pools`, a row per pool in summary.csv, the tables, the figure and the contrasts (results.csv
    and .json hold the cells only)."""
    fields = ["model", "source", "protocol", "task", "seed", "baseline", "metric", "value", "top1", "top5", "best_top1"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buffer.getvalue())
    atomic_write_text(out / "results.json", json.dumps(rows, indent=1))
    rows = [*rows, *pooled_rows(rows, pools or [])]
    summary = summarize(rows)
    buffer = io.StringIO()
    summary_fields = ["model", "protocol", "task", "metric", "mean", "std", "n", "baseline", "pool"]
    writer = csv.DictWriter(buffer, fieldnames=summary_fields)
    writer.writeheader()
    writer.writerows(summary)
    atomic_write_text(out / "summary.csv", buffer.getvalue())
    text = markdown_table(rows)
    found = contrast_rows(rows, contrasts) if contrasts else []
    if contrasts:
        text += "\n" + contrasts_markdown(found)
        atomic_write_text(out / "contrasts.csv", contrasts_csv(found))
    else:  # an earlier invocation's contrasts would no longer match these tables
        (out / "contrasts.csv").unlink(missing_ok=True)
    atomic_write_text(out / "results.md", text)
    if figure:
        write_figure(summary, out, found)


def write_figure(summary: list[dict[str, Any]], out: Path, contrasts: list[dict[str, Any]] | None = None) -> None:
    """OUT/compare.png from summarize()'s rows (viz.compare_plot) and, with contrasts, OUT/contrasts.png
    (viz.contrast_plot); a comparison of baselines alone has no figure, and a figure left from an earlier invocation
    is removed rather than shown beside tables it no longer matches."""
    from mimkit.viz.compare_plot import plot_compare  # matplotlib only once there are tables to draw
    from mimkit.viz.contrast_plot import plot_contrasts

    if plot_compare(summary, figure_panels(summary), out / "compare.png") is None:
        (out / "compare.png").unlink(missing_ok=True)
    if plot_contrasts(contrasts or [], out / "contrasts.png") is None:
        (out / "contrasts.png").unlink(missing_ok=True)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, protocol, task): mean and sample standard deviation over seeds (std 0 for one seed); a
    pool's over its replicas."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("value") is not None:
            groups.setdefault((row["model"], row["protocol"], row["task"]), []).append(row)
    out = []
    for (model, protocol, task), members in groups.items():
        cell = spread([float(r["value"]) for r in members])
        out.append(
            {
                "model": model,
                "protocol": protocol,
                "task": task,
                "metric": members[0]["metric"],
                "mean": cell["mean"],
                "std": cell["std"],
                "n": cell["n"],
                "baseline": bool(members[0].get("baseline", False)),
                "pool": members[0].get("pool", ""),  # a pool's replicas (eval/pools.py), joined by +
            }
        )
    return out


def best_baseline(summary: list[dict[str, Any]], task: str, protocol: str) -> dict[str, Any] | None:
    """The bar a model's cell must clear, from summarize()'s rows: the best baseline of the same protocol (a
    baseline without that protocol, such as the trivial predictor, counts with its one row), and for fine-tuning
    (which can learn any of them) every baseline of the task. None when the comparison has no baseline there."""
    lookup = {(r["model"], r["task"], r["protocol"]): r for r in summary if r["baseline"]}
    base = dict.fromkeys(r["model"] for r in summary if r["baseline"])
    wanted = ("knn", "linprobe", "trivial") if protocol == "finetune" else (protocol,)
    entries = [e for b in base for p in wanted if (e := lookup.get((b, task, p)) or lookup.get((b, task, "trivial")))]
    if not entries:
        return None
    return (max if PRIMARY[task][1] else min)(entries, key=lambda e: e["mean"])


def figure_panels(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What compare.png draws per task with a measured model: its primary metric and direction, the protocols
    measured, and each protocol's bar (best_baseline, the tables' † bar)."""
    models = {r["model"] for r in summary if not r["baseline"]}
    panels = []
    for task in TASKS:
        protocols = [
            p
            for p in PROTOCOLS
            if any(r["task"] == task and r["protocol"] == p and r["model"] in models for r in summary)
        ]
        if protocols:
            metric, higher = PRIMARY[task]
            bars = {p: best_baseline(summary, task, p) for p in protocols}
            panels.append({"task": task, "metric": metric, "higher": higher, "protocols": protocols, "bars": bars})
    return panels


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Two tables: frozen (kNN, linear probe) vs fine-tuned classification top-1, and each task's primary metric
    frozen vs fine-tuned (semantic vs geometric). Cells are mean +- std over seeds; the baselines that learn nothing
    sit below the models, and a model's cell that does not beat the best of them is marked (†), one that beats it
    by no more than the seed spread too (≈)."""
    summary = summarize(rows)
    lookup = {(r["model"], r["task"], r["protocol"]): r for r in summary}
    models = list(dict.fromkeys(r["model"] for r in summary if not r["baseline"]))
    base = list(dict.fromkeys(r["model"] for r in summary if r["baseline"]))
    seeds = sorted({r["n"] for r in summary if not r["pool"]}) or sorted({r["n"] for r in summary})
    pooled = pool_sizes(summary)
    flagged = close = False

    def entry(model: str, task: str, protocol: str) -> dict[str, Any] | None:
        return lookup.get((model, task, protocol)) or lookup.get((model, task, "trivial"))

    def cell(model: str, task: str, protocol: str) -> str:
        nonlocal flagged, close
        row = entry(model, task, protocol)
        if row is None:
            return ""
        digits = DECIMALS.get(row["metric"], 3)
        text = mean_std(row["mean"], row["std"], row["n"], digits)
        if row["model"] in pooled and row["n"] < pooled[row["model"]]:  # a replica's cell still to come
            text += f" ({row['n']} of {pooled[row['model']]} replicas)"
        bar = best_baseline(summary, task, protocol)
        if not row["baseline"] and bar is not None:
            margin = row["mean"] - bar["mean"] if PRIMARY[task][1] else bar["mean"] - row["mean"]
            if margin <= 0:
                flagged = True
                text += " †"
            elif margin <= within_spread(row, bar):
                close = True
                text += " ≈"
        return text

    def label(model: str) -> str:
        if model in pooled:
            return f"**{model}** (pool of {pooled[model]})"
        return f"*{model}* (baseline)" if model in base else model

    def rows_of(columns: list[tuple[str, str]]) -> list[str]:
        return [f"| {label(m)} | " + " | ".join(cell(m, t, p) for t, p in columns) + " |" for m in [*models, *base]]

    spread = f"mean ± std over {seeds[0]} seeds" if seeds == [seeds[0]] and seeds[0] > 1 else "one seed"
    if len(seeds) > 1:
        spread = f"mean ± std over {min(seeds)}-{max(seeds)} seeds (unfinished cells)"
    protocols = [p for p in PROTOCOLS if any(r["protocol"] == p and r["task"] == "classification" for r in summary)]
    lines = []
    if protocols:  # a comparison of geometric tasks alone has no classification table
        lines = [
            f"# Frozen vs fine-tuned: classification top-1 (%), {spread}",
            "",
            "| model | " + " | ".join(protocols) + " |",
            "|---|" + "---|" * len(protocols),
            *rows_of([("classification", p) for p in protocols]),
        ]
    tasks = [t for t in TASKS if any(r["task"] == t for r in summary)]
    columns = [
        (t, p)
        for t in tasks
        for p in ("linprobe", "finetune")
        if any(r["task"] == t and r["protocol"] == p and not r["baseline"] for r in summary)
    ]
    if columns:
        header = [
            f"{t} {PRIMARY[t][0]} ({'higher' if PRIMARY[t][1] else 'lower'} is better), "
            f"{'frozen' if p == 'linprobe' else 'fine-tuned'}"
            for t, p in columns
        ]
        lines += [
            *([""] if lines else []),
            f"# Semantic vs geometric tasks, {spread}",
            "",
            "| model | " + " | ".join(header) + " |",
            "|---|" + "---|" * len(columns),
            *rows_of(columns),
        ]
    notes = pool_notes(rows)
    if notes:
        lines += ["", "Pools of pretraining replicas:", *notes]
    if base:
        lines += ["", "Baselines that learn nothing:"]
        lines += [f"- *{b}*: {BASELINE_NOTES.get(b, 'a baseline')}" for b in base]
        for task in tasks:
            values = [r["threshold_iou"] for r in rows if r["task"] == task and r.get("threshold_iou") is not None]
            if values:
                lines.append(
                    f"- thresholding (the tight box of the pixels brighter than the canvas' median) on {task}: "
                    f"mean IoU {sum(values) / len(values):.3f}"
                )
    if flagged:
        lines += ["", "† not better than a baseline that learns nothing in this column: read the protocol first."]
    if close:
        lines += [
            "",
            "≈ better than the best baseline that learns nothing by no more than the larger seed spread (std; a "
            "one-seed cell is judged by the other's): not a finding.",
        ]
    return "\n".join(lines) + "\n"
