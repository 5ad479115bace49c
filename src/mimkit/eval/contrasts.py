"""Contrasts between two models of a comparison (`compare --contrast A:B`). The papers' claims are pairwise
(relation targets vs the class token, raw vs masked input, MIM vs supervised), so each named pair gets, for every
task and protocol both were measured with, the difference paired by evaluation seed (a seed's cells share the head's
initialisation, the data order and the subsets), a paired t-test, and a verdict by the comparison's own rule: a
difference no larger than the larger of the two seed spreads, or one its t-test does not support (p >= 0.05), is
not a finding. A pool of pretraining replicas
(eval/pools.py) shares no seed with anything, so a pair with one is unpaired: the difference of the means, the std of
a difference of one draw from each side, Welch's t-test, and the same rule."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from mimkit.config import ConfigError
from mimkit.eval.pools import pool_sizes
from mimkit.eval.spread import DECIMALS, PRIMARY, mean_std, spread, within_spread

FIELDS = ["a", "b", "task", "protocol", "metric", "a_mean", "a_std", "a_n", "b_mean", "b_std", "b_n", "delta"]
FIELDS += ["delta_std", "n"]
FIELDS += ["p_paired_t", "p_welch_t", "paired", "verdict"]
ALPHA = 0.05  # a difference beyond the spread is a finding only when its t-test agrees at this level


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
    pooled = pool_sizes(rows)
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
            row = {"a": a, "b": b, "task": task, "protocol": protocol, "metric": metrics[task]}
            if a in pooled or b in pooled:
                row.update(_unpaired(a, b, list(va.values()), list(vb.values()), PRIMARY[task][1]))
                short = [m for m, v in ((a, va), (b, vb)) if m in pooled and len(v) < pooled[m]]
                if short:  # a replica still running: the pool's number is not yet the method's
                    row["verdict"] = f"{', '.join(short)} without every replica here: no verdict"
            else:
                row.update(_paired(a, b, va, vb, PRIMARY[task][1]))
            out.append(row)
    return out


def _paired(a: str, b: str, va: dict[int, float], vb: dict[int, float], higher: bool) -> dict[str, Any]:
    """Everything over the seeds both have: means, spreads and the difference describe the same cells."""
    seeds = sorted(set(va) & set(vb))
    sa, sb = spread([va[s] for s in seeds] or [math.nan]), spread([vb[s] for s in seeds] or [math.nan])
    diffs = [va[s] - vb[s] for s in seeds]
    p = _paired_p(diffs)
    return {
        "a_mean": sa["mean"],
        "a_std": sa["std"],
        "a_n": len(seeds),
        "b_mean": sb["mean"],
        "b_std": sb["std"],
        "b_n": len(seeds),
        "delta": sum(diffs) / len(diffs) if diffs else None,
        "delta_std": spread(diffs)["std"] if diffs else None,
        "n": len(seeds),
        "p_paired_t": p,
        "p_welch_t": None,
        "paired": True,
        "verdict": _verdict(a, b, diffs, sa, sb, higher, p),
        "seed_deltas": diffs,  # for the figure's dots; not a CSV column
    }


def _unpaired(a: str, b: str, va: list[float], vb: list[float], higher: bool) -> dict[str, Any]:
    """Every value of each side (a pool's replicas, a model's seeds); delta_std is the std of a difference of one
    draw from each side, sqrt(sa^2 + sb^2), on the paired std's scale; n the smaller side's count."""
    sa, sb = spread(va), spread(vb)
    delta = sa["mean"] - sb["mean"]
    n = min(sa["n"], sb["n"])
    p = _welch_p(va, vb, sa, sb)
    # the tables' rule (a spread, no NaN, beyond the larger std, p), given as many equal differences as the smaller side
    verdict = "one value on a side: no verdict" if n < 2 else _verdict(a, b, [delta] * n, sa, sb, higher, p)
    return {
        "a_mean": sa["mean"],
        "a_std": sa["std"],
        "a_n": sa["n"],
        "b_mean": sb["mean"],
        "b_std": sb["std"],
        "b_n": sb["n"],
        "delta": delta,
        "delta_std": math.sqrt(sa["std"] ** 2 + sb["std"] ** 2),
        "n": n,
        "p_paired_t": None,
        "p_welch_t": p,
        "paired": False,
        "verdict": verdict,
        "seed_deltas": [],  # nothing pairs a pool's replica with a seed: no dots
    }


def _welch_p(va: list[float], vb: list[float], sa: dict, sb: dict) -> float | None:
    """Two-sided Welch t-test p (unequal variances); None below 2 values a side, with a NaN, or with no spread on
    either (sa, sb: spread() of va, vb)."""
    if sa["n"] < 2 or sb["n"] < 2 or not all(math.isfinite(v) for v in [*va, *vb]):
        return None
    if sa["std"] == 0 and sb["std"] == 0:
        return None
    from scipy import stats

    return float(stats.ttest_ind(va, vb, equal_var=False).pvalue)


def _paired_p(diffs: list[float]) -> float | None:
    """Two-sided paired t-test p of the per-seed differences (scipy's ttest_rel); None for fewer than 2 seeds. Equal
    differences on every seed give p 0 (a lead) or 1 (no difference), as ttest_rel's limits."""
    if len(diffs) < 2:
        return None
    d = spread(diffs)
    mean, std = d["mean"], d["std"]
    if std == 0:
        return 1.0 if mean == 0 else 0.0
    from scipy import stats

    t = mean / (std / math.sqrt(len(diffs)))
    return float(2 * stats.t.sf(abs(t), len(diffs) - 1))


def _verdict(a: str, b: str, diffs: list[float], sa: dict, sb: dict, higher: bool, p: float | None) -> str:
    """The tables' rule on the common seeds: a finding only beyond the larger of the two seed spreads, and only when
    the t-test (p: paired, or Welch's for a pool) agrees at ALPHA. Either alone lets noise through with 3 seeds: a
    steady small lead gets a small p inside the spreads, a lead beyond the spreads that one seed reverses a large p."""
    if not diffs:
        return "no common seeds: no verdict"
    if len(diffs) < 2:
        return "one common seed: no verdict"
    if not all(math.isfinite(d) for d in diffs):
        return "not a number on some seed: no verdict"
    if sa["std"] == 0 and sb["std"] == 0:
        return "no seed spread (the same number on every seed): no verdict"
    delta = sum(diffs) / len(diffs)
    if abs(delta) <= within_spread(sa, sb):
        return "≈ within the seed spread: not a finding"
    if p is not None and not p < ALPHA:  # NaN too
        return f"≈ beyond the seed spread but p {p:.2g} >= {ALPHA}: not a finding"
    return f"{a} better" if (delta > 0) == higher else f"{b} better"


def contrasts_markdown(contrasts: list[dict[str, Any]]) -> str:
    """The contrasts table for results.md (each side's mean ± std over its own count: a pool's replicas, a model's
    seeds)."""
    if not contrasts:
        return ""
    unpaired = any(not c.get("paired", True) for c in contrasts)
    lines = [
        "# Contrasts (differences paired by evaluation seed" + ("; pairs with a pool unpaired)" if unpaired else ")"),
        "",
        "| A vs B | task | protocol | A | B | Δ = A − B"
        + (" | n (A, B) | p (paired t, or Welch)" if unpaired else " (paired) | seeds | paired t p")
        + " | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in contrasts:
        digits = DECIMALS.get(c["metric"], 3)
        p = "" if c["p_paired_t"] is None else f"{c['p_paired_t']:.3f}"
        count = f"{c['n']}, {c['n']}" if unpaired else str(c["n"])  # a paired row under the mixed header
        if not c.get("paired", True):
            p = "" if c["p_welch_t"] is None else f"{c['p_welch_t']:.3f} (Welch)"
            count = f"{c['a_n']}, {c['b_n']}"
        n = c["n"]
        cells = [
            mean_std(c["a_mean"], c["a_std"], c["a_n"], digits) if n else "",
            mean_std(c["b_mean"], c["b_std"], c["b_n"], digits) if n else "",
            mean_std(c["delta"], c["delta_std"], n, digits) if n else "",
        ]
        lines.append(
            f"| {c['a']} vs {c['b']} | {c['task']} | {c['protocol']} | {' | '.join(cells)} | {count} | {p} | "
            f"{c['verdict']} |"
        )
    lines += [
        "",
        "Every number is over the seeds both models have (a model's other seeds are left out here). A verdict needs "
        "at least 2 common seeds, a paired difference larger than the larger of the two seed spreads (std) and a "
        f"paired t-test p under {ALPHA}: either alone lets noise through with few seeds.",
    ]
    if unpaired:
        lines += [
            "",
            "A pair with a pool (pretraining replicas) is unpaired, and the sentence above is not about it: each "
            "side's mean ± std is over all its replicas "
            "(or seeds), Δ the difference of the means, its ± the std of a difference of one draw from each side, p "
            "Welch's t-test, and the verdict the same rule with Welch's p (at least 2 values a side; none while a pool "
            "lacks a replica).",
        ]
    return "\n".join(lines) + "\n"


def contrasts_csv(contrasts: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(contrasts)
    return buffer.getvalue()
