"""`mimkit scaling analyze`: the data-scaling paper's questions asked of a results table.

- overfit: does held-out loss rise when the same model on the same data trains longer? (and the train/held-out gap)
- turnups: inside each run's evaluation curve (curves.json), does held-out loss turn up while the train-subset loss
  keeps falling, by more than the noise over seeds? (turnup.py)
- saturation: how much does the largest data size still help over the second largest, per model and length?
- correlation: does held-out loss predict fine-tune top-1 (Pearson, Spearman; overall and per model)?
- fits: power laws of held-out loss in params, compute and data, over the runs not flagged as over-fitting.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mimkit.engine.atomic import atomic_write_text
from mimkit.scaling.fits import fit_power_law
from mimkit.scaling.table import (
    Point,
    aggregate,
    data_order,
    model_order,
    read_table,
    transfer_label,
    transfer_protocol,
)


def find_overfitting(points: list[Point], tolerance: float = 0.0) -> dict[str, Any]:
    """Every (model, data) whose held-out loss rises from a shorter to the next longer length by more than
    `tolerance` (relative), and the set of over-fit cells: those above the best loss of any shorter length."""
    rises, flagged = [], set()
    for (model, data), group in _groups(points, ("model", "data")).items():
        group = sorted(group, key=lambda p: p.iterations)
        best = math.inf
        for shorter, longer in zip(group, group[1:]):
            if longer.heldout_loss > shorter.heldout_loss * (1 + tolerance):
                rises.append(
                    {
                        "model": model,
                        "data": data,
                        "short_iterations": shorter.iterations,
                        "long_iterations": longer.iterations,
                        "short_loss": shorter.heldout_loss,
                        "long_loss": longer.heldout_loss,
                        "rise": longer.heldout_loss - shorter.heldout_loss,
                    }
                )
        for p in group:
            if p.heldout_loss > best * (1 + tolerance):
                flagged.add(_key(p))
            best = min(best, p.heldout_loss)
    gaps = [
        {
            "model": p.model,
            "data": p.data,
            "iterations": p.iterations,
            "train_loss": p.get("train_loss"),
            "heldout_loss": p.heldout_loss,
            "gap": p.heldout_loss - p.get("train_loss"),
        }
        for p in points
        if p.get("train_loss") is not None
    ]
    return {
        "rises": rises,
        "flagged": [list(k) for k in sorted(flagged, key=str)],
        "gaps": gaps,
        "tolerance": tolerance,
    }


def find_saturation(points: list[Point]) -> list[dict[str, Any]]:
    """Per (model, length): held-out loss at the largest data size minus that at the second largest."""
    order = {d: i for i, d in enumerate(data_order(points))}
    out = []
    for (model, iterations), group in _groups(points, ("model", "iterations")).items():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda p: order[p.data])
        second, largest = group[-2], group[-1]
        change = largest.heldout_loss - second.heldout_loss
        out.append(
            {
                "model": model,
                "iterations": iterations,
                "data_from": second.data,
                "data_to": largest.data,
                "loss_from": second.heldout_loss,
                "loss_to": largest.heldout_loss,
                "change": change,
                "relative_change": change / second.heldout_loss,
            }
        )
    return out


def loss_accuracy_correlation(points: list[Point]) -> dict[str, Any]:
    """Pearson and Spearman between held-out loss and fine-tune top-1 (expected negative: lower loss, higher
    accuracy), over all cells and within each model (cells differ in data and length)."""
    from scipy.stats import pearsonr, spearmanr

    def corr(group: list[Point]) -> dict[str, Any]:
        pairs = [(p.heldout_loss, p.get("finetune_top1")) for p in group if p.get("finetune_top1") is not None]
        result: dict[str, Any] = {"n": len(pairs)}
        if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
            return {**result, "pearson": None, "spearman": None, "note": "needs 3+ cells with varying values"}
        loss, top1 = zip(*pairs)
        pr, sr = pearsonr(loss, top1), spearmanr(loss, top1)
        out = {
            **result,
            "pearson": float(pr.statistic),
            "pearson_p": float(pr.pvalue),
            "spearman": float(sr.statistic),
            "spearman_p": float(sr.pvalue),
            "p_method": "asymptotic (scipy)",
        }
        if len(pairs) <= EXACT_MAX_N:  # few points: scipy's t approximation is far off (it gives 0 for n=4)
            out.update(exact_correlation_p(loss, top1), p_method=f"exact: all {math.factorial(len(pairs))} orderings")
        return out

    return {
        "overall": corr(points),
        "per_model": {m: corr([p for p in points if p.model == m]) for m in model_order(points)},
    }


EXACT_MAX_N = 8  # 8! = 40,320 orderings: exact permutation p-values up to here


def exact_correlation_p(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Two-sided permutation p-values of Pearson and Spearman over every ordering of y: the share of orderings whose
    |r| is at least the observed one. With 4 points the smallest possible p is 2/24."""
    from scipy.stats import rankdata

    order = np.array(list(itertools.permutations(range(len(x)))))

    def p_of(a: np.ndarray, b: np.ndarray) -> float:
        a = (a - a.mean()) / np.linalg.norm(a - a.mean())
        shuffled = b[order]
        shuffled = shuffled - shuffled.mean(axis=1, keepdims=True)
        r = shuffled @ a / np.linalg.norm(shuffled, axis=1)
        observed = abs(float((b - b.mean()) @ a / np.linalg.norm(b - b.mean())))
        return float(np.mean(np.abs(r) >= observed - 1e-12))

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return {"pearson_p": p_of(xs, ys), "spearman_p": p_of(rankdata(xs), rankdata(ys))}


def compute_frontier(points: list[Point]) -> list[Point]:
    """Cells no cheaper cell beats: sorted by compute, each one lowers the best loss so far (of cells with equal
    compute, only the lowest loss)."""
    frontier, best, last_compute = [], math.inf, None
    for p in sorted(points, key=lambda p: (p.get("compute"), p.heldout_loss)):
        if p.get("compute") != last_compute and p.heldout_loss < best:
            frontier.append(p)
            best = p.heldout_loss
        last_compute = p.get("compute")
    return frontier


def scaling_fits(points: list[Point], flagged: set[tuple], form: str = "auto") -> dict[str, Any]:
    """Power laws over the cells not flagged as over-fitting: against params (per data and length), against data
    (per model and length, numeric data sizes only) and against compute (the compute-efficient frontier)."""
    clean = [p for p in points if _key(p) not in flagged]
    fits: dict[str, Any] = {
        "params": [],
        "data": [],
        "compute": None,
        "form": form,
        "excluded_overfit": len(points) - len(clean),
    }
    for (data, iterations), group in _groups(clean, ("data", "iterations")).items():
        fits["params"].append(
            {
                "data": data,
                "iterations": iterations,
                **_try_fit([p.params for p in group], [p.heldout_loss for p in group], form),
            }
        )
    for (model, iterations), group in _groups(clean, ("model", "iterations")).items():
        sized = [p for p in group if p.data_size is not None]
        fits["data"].append(
            {
                "model": model,
                "iterations": iterations,
                **_try_fit([p.data_size for p in sized], [p.heldout_loss for p in sized], form),
            }
        )
    if clean and all(p.get("compute") is not None for p in clean):
        frontier = compute_frontier(clean)
        fits["compute"] = {
            "axis": "compute (training FLOPs)",
            "frontier": [_cell(p) for p in frontier],
            **_try_fit([p.get("compute") for p in frontier], [p.heldout_loss for p in frontier], form),
        }
    else:
        fits["compute"] = {"note": "no compute column (a mimkit sweep writes one: FLOPs per image x images seen)"}
    return fits


def analyze_table(
    path: str | Path,
    out: str | Path,
    tolerance: float = 0.0,
    form: str = "auto",
    curves: str | Path | None = None,
    baselines: list[str] | None = None,
) -> dict[str, Any]:
    """Read RESULTS.csv, write OUT/scaling.json, OUT/results.md (mean ± std per cell; with `baselines`, MODEL=DIR
    compare directories, each model's random-init and learn-nothing baselines beside it) and the figures; returns
    the JSON content."""
    from mimkit.scaling.baselines import bars, load_baselines, results_markdown
    from mimkit.scaling.plots import draw_all
    from mimkit.scaling.turnup import draw_turnups, find_turnups, turnup_markdown

    out = Path(out)
    curves_path = Path(curves) if curves else Path(path).parent / "curves.json"
    run_curves = json.loads(curves_path.read_text()) if curves_path.is_file() else None
    rows = read_table(path)
    points = in_size_order(aggregate(rows))
    base = load_baselines(baselines or [], model_order(points))
    protocol = transfer_protocol(rows)
    overfit = find_overfitting(points, tolerance)
    flagged = {tuple(k) for k in overfit["flagged"]}
    result = {
        "source": str(path),
        "rows": len(rows),
        "cells": len(points),
        "transfer_protocol": protocol,
        "transfer": transfer_label(protocol),
        "models": {m: next(p.params for p in points if p.model == m) for m in model_order(points)},
        "data": data_order(points),
        "iterations": sorted({p.iterations for p in points}),
        "overfit": overfit,
        "turnups": _by_size(find_turnups(run_curves), model_order(points)) if run_curves else [],
        "saturation": find_saturation(points),
        "correlation": loss_accuracy_correlation(points),
        "fits": scaling_fits(points, flagged, form),
        "cells_table": [_cell(p) for p in points],
        "baselines": {
            m: [{"model": k[0], "protocol": k[1], **c} for k, c in cells.items()] for m, cells in base.items()
        },
        "bars": bars(base, protocol),
    }
    out.mkdir(parents=True, exist_ok=True)
    turnups = turnup_markdown(result["turnups"])
    atomic_write_text(
        out / "results.md",
        results_markdown(result["cells_table"], base, result["transfer"], protocol)
        + (f"\n{turnups}" if turnups else ""),
    )
    figures = draw_all(points, result, out, run_curves)
    if result["turnups"]:
        figures.append(draw_turnups(run_curves, result["turnups"], out / "turnup_curves.png"))
    result["figures"] = [str(f) for f in figures]
    atomic_write_text(out / "scaling.json", json.dumps(result, indent=1, default=_jsonable))
    return result


def in_size_order(points: list[Point]) -> list[Point]:
    """Cells by model size, then data size, then length, whatever order the rows were written in (a table merged
    from several runs or sweeps), so results.md's per-model tables read like its figures."""
    models = {m: i for i, m in enumerate(model_order(points))}
    data = {d: i for i, d in enumerate(data_order(points))}
    return sorted(points, key=lambda p: (models[p.model], data[p.data], p.iterations))


def _by_size(entries: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """Turn-up verdicts with their models in size order (smallest first), as every other table and figure has them;
    a model the table does not know goes last."""
    rank = {m: i for i, m in enumerate(models)}
    return sorted(entries, key=lambda e: rank.get(e["model"], len(rank)))


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A few lines for the console: what the analysis found."""
    lines = [
        f"{result['rows']} runs in {result['cells']} cells; models {', '.join(result['models'])}; "
        f"data {', '.join(result['data'])}"
    ]
    rises = result["overfit"]["rises"]
    lines.append(
        f"over-fitting: {len(rises)} (model, data) pair(s) whose held-out loss rises with longer training"
        + "".join(
            f"\n  {r['model']} on {r['data']}: {r['short_loss']:.4f} at {r['short_iterations']:g} "
            f"-> {r['long_loss']:.4f} at {r['long_iterations']:g}"
            for r in rises
        )
    )
    for t in result.get("turnups", []):
        if t.get("turned_up"):
            lines.append(
                f"held-out turn-up inside {t['model']} on {t['data']} ({t['iterations']:g} steps, {t['seeds']} seeds): "
                f"lowest {t['min_loss']:.4f} at step {t['min_step']:g}, {t['final_loss']:.4f} at the end "
                f"({t['reason']})"
            )
    for s in result["saturation"]:
        lines.append(
            f"saturation {s['model']} @ {s['iterations']:g}: data {s['data_from']} -> {s['data_to']} "
            f"changes held-out loss by {100 * s['relative_change']:+.2f}%"
        )
    c = result["correlation"]["overall"]
    if c.get("pearson") is not None:
        lines.append(
            f"loss vs {result['transfer']} (n={c['n']}): Pearson {c['pearson']:+.3f}, Spearman {c['spearman']:+.3f}"
        )
    for axis in ("params", "data"):
        for f in result["fits"][axis]:
            if "alpha" in f:
                where = ", ".join(f"{k} {f[k]}" for k in ("model", "data", "iterations") if k in f)
                lines.append(
                    f"fit vs {axis} ({where}): alpha {f['alpha']:.3f} +- {f['alpha_err']:.3f} ({f['form']}, n={f['n']})"
                )
    comp = result["fits"]["compute"]
    if comp and "alpha" in comp:
        lines.append(f"fit vs compute (frontier, n={comp['n']}): alpha {comp['alpha']:.3f} +- {comp['alpha_err']:.3f}")
    return lines


def _try_fit(x: list[float], y: list[float], form: str) -> dict[str, Any]:
    try:
        return fit_power_law(x, y, form)
    except ValueError as err:
        return {"n": len(x), "note": str(err)}


def _groups(points: list[Point], keys: tuple[str, ...]) -> dict[tuple, list[Point]]:
    groups: dict[tuple, list[Point]] = defaultdict(list)
    for p in points:
        groups[tuple(getattr(p, k) for k in keys)].append(p)
    return dict(groups)


def _key(p: Point) -> tuple:
    return (p.model, p.data, p.iterations)


def _cell(p: Point) -> dict[str, Any]:
    return {
        "model": p.model,
        "params": p.params,
        "data": p.data,
        "data_size": p.data_size,
        "iterations": p.iterations,
        "heldout_loss": p.heldout_loss,
        "heldout_std": p.heldout_std,
        "seeds": p.n,
        **p.extra,
    }


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
