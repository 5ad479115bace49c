"""Contrasts between two models of a comparison (`compare --contrast A:B`). The papers' claims are pairwise
(relation targets vs the class token, raw vs masked input, MIM vs supervised), so each named pair gets, for every
task and protocol both were measured with, the difference paired by evaluation seed (a seed's cells share the head's
initialisation, the data order and the subsets), a paired t-test, and a verdict by the comparison's own rule: a
difference no larger than the larger of the two seed spreads is not a finding."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from mimkit.config import ConfigError
from mimkit.eval.spread import DECIMALS, PRIMARY, mean_std, spread, within_spread

FIELDS = ["a", "b", "task", "protocol", "metric", "a_mean", "a_std", "b_mean", "b_std", "delta", "delta_std", "n"]
FIELDS += ["p_paired_t", "verdict"]


def parse_contrasts(specs: list[str]) -> list[tuple[str, str]]:
    """`A:B` words -> (A, B) pairs, in the order given, each once."""
    pairs = []
    for spec in specs:
        a, sep, b = spec.partition(":")
        if not (sep and a and b) or a == b or ":" in b:
            raise ConfigError(f"--contrast '{spec}': give two different model names as A:B, e.g. --contrast qkvv:cls")
        if (a, b) not in pairs:
            pairs.append((a, b))
    return pairs


def check_names(pairs: list[tuple[str, str]], models: list[str]) -> None:
    """Every name in a contrast must be a model (or baseline) of the comparison: a typo would give an empty table."""
    for a, b in pairs:
        unknown = [m for m in (a, b) if m not in models]
        if unknown:
            raise ConfigError(
                f"--contrast {a}:{b}: no model named {', '.join(map(repr, unknown))} in this comparison; its models "
                f"and baselines: {', '.join(models)}"
            )


def contrast_rows(rows: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per (pair, task, protocol) that both models were measured with, in the comparison's order (a model
    not measured yet, in a comparison still running, has no rows; check_names catches a misspelt one first)."""
    values: dict[tuple[str, str, str], dict[int, float]] = {}
    metrics: dict[str, str] = {}
    for row in rows:
        if row.get("value") is None:
            continue
        key = (row["model"], row["task"], row["protocol"])
        values.setdefault(key, {})[int(row.get("seed") or 0)] = float(row["value"])
        metrics[row["task"]] = row["metric"]
    columns = list(dict.fromkeys((t, p) for _, t, p in values))
    out = []
    for a, b in pairs:
        for task, protocol in columns:
            va, vb = values.get((a, task, protocol)), values.get((b, task, protocol))
            if not va or not vb:
                continue
            sa, sb = spread(list(va.values())), spread(list(vb.values()))
            seeds = sorted(set(va) & set(vb))
            diffs = [va[s] - vb[s] for s in seeds]
            delta = sum(diffs) / len(diffs) if diffs else sa["mean"] - sb["mean"]
            out.append(
                {
                    "a": a,
                    "b": b,
                    "task": task,
                    "protocol": protocol,
                    "metric": metrics[task],
                    "a_mean": sa["mean"],
                    "a_std": sa["std"],
                    "b_mean": sb["mean"],
                    "b_std": sb["std"],
                    "delta": delta,
                    "delta_std": spread(diffs)["std"] if diffs else 0.0,
                    "n": len(seeds),
                    "p_paired_t": _paired_p(diffs),
                    "verdict": _verdict(a, b, delta, sa, sb, len(seeds), PRIMARY[task][1], within_spread(sa, sb)),
                }
            )
    return out


def _paired_p(diffs: list[float]) -> float | None:
    """Two-sided paired t-test p of the per-seed differences; None for one seed or identical differences."""
    if len(diffs) < 2:
        return None
    mean, std = spread(diffs)["mean"], spread(diffs)["std"]
    if std == 0:
        return None
    from scipy import stats

    t = mean / (std / math.sqrt(len(diffs)))
    return float(2 * stats.t.sf(abs(t), len(diffs) - 1))


def _verdict(a: str, b: str, delta: float, sa: dict, sb: dict, n: int, higher: bool, margin: float) -> str:
    if n < 2 or sa["n"] < 2 or sb["n"] < 2:
        return "one seed: no verdict"
    if abs(delta) <= margin:
        return "≈ within the seed spread: not a finding"
    return f"{a} better" if (delta > 0) == higher else f"{b} better"


def contrasts_markdown(contrasts: list[dict[str, Any]]) -> str:
    """The contrasts table for results.md."""
    if not contrasts:
        return ""
    lines = [
        "# Contrasts (differences paired by evaluation seed)",
        "",
        "| A vs B | task | protocol | A | B | Δ = A − B (paired) | seeds | paired t p | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in contrasts:
        digits = DECIMALS.get(c["metric"], 3)
        p = "" if c["p_paired_t"] is None else f"{c['p_paired_t']:.3f}"
        lines.append(
            f"| {c['a']} vs {c['b']} | {c['task']} | {c['protocol']} | "
            f"{mean_std(c['a_mean'], c['a_std'], 2 if c['a_std'] else 1, digits)} | "
            f"{mean_std(c['b_mean'], c['b_std'], 2 if c['b_std'] else 1, digits)} | "
            f"{mean_std(c['delta'], c['delta_std'], c['n'], digits)} | {c['n']} | {p} | {c['verdict']} |"
        )
    lines += [
        "",
        "A verdict needs at least 2 seeds of each model and a paired difference larger than the larger of the two "
        "seed spreads (std); the paired t-test's p is shown beside it, not used for the verdict.",
    ]
    return "\n".join(lines) + "\n"


def contrasts_csv(contrasts: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(contrasts)
    return buffer.getvalue()
