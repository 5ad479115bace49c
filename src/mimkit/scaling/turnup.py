"""Over-fitting inside a run: does the fixed-mask held-out loss turn up while the train-subset loss keeps falling?

The data-scaling paper's over-fitting (large models, small data, long training) shows as held-out loss rising late
in training while the loss on training images still falls. `find_overfitting` compares the final losses of runs of
different lengths; this reads the evaluation curves (curves.json) of the runs of one (model, data, length), one per
seed, and asks whether the rise after the minimum is larger than the noise:

- the minimum is taken on the seeds' mean curve (step s*), and each seed's rise is its last held-out loss minus its
  loss at s*, so the seeds are measured at the same step;
- the noise is the larger of the rises' sample std over seeds and the evaluation jitter (the std of successive
  differences over the last half of the evaluations, / sqrt 2: a steady trend does not count as noise);
- a turn-up is called when the mean rise is more than `ratio` (3) times that noise and the train-subset loss fell
  from s* to the end. With one seed and too few evaluations to measure jitter, no call is made (None).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import numpy as np

MIN_JITTER_DIFFS = 3  # successive differences needed to estimate the evaluation noise


def _aligned(curves: list[list[list[float]]]) -> tuple[list[float], np.ndarray] | None:
    """The evaluation steps every curve has (step 0 excluded: the untrained model) and the losses there."""
    common = set.intersection(*({step for step, _ in c if step > 0} for c in curves)) if curves else set()
    if not common:
        return None
    steps = sorted(common)
    lookups = [dict((s, v) for s, v in c) for c in curves]
    table = np.array([[lookup[step] for step in steps] for lookup in lookups], dtype=float)
    return steps, table


def _jitter(losses: np.ndarray) -> float:
    """Evaluation noise of one curve: std of successive differences over its last half, / sqrt 2."""
    tail = losses[len(losses) // 2 :]
    diffs = np.diff(tail)
    if len(diffs) < MIN_JITTER_DIFFS:
        return math.nan
    return float(np.std(diffs, ddof=1) / math.sqrt(2))


def turnup_of(heldout: list[list[list[float]]], train_fixed: list[list[list[float]]], ratio: float = 3.0) -> dict:
    """The turn-up verdict for the curves of one cell (one held-out and one train-subset curve per seed)."""
    aligned = _aligned(heldout)
    if aligned is None:
        return {"seeds": len(heldout), "turned_up": None, "reason": "no common evaluation steps"}
    steps, held = aligned
    at_min = int(np.argmin(held.mean(axis=0)))
    rises = [float(r) for r in held[:, -1] - held[:, at_min]]
    jitters = [j for j in (_jitter(row) for row in held) if not math.isnan(j)]
    terms = ([stdev(rises)] if len(rises) > 1 else []) + ([mean(jitters)] if jitters else [])
    noise = max(terms) if terms else math.nan
    untrained = [v for c in heldout for step, v in c if step == 0]  # the learn-nothing reference: step 0's loss
    out: dict[str, Any] = {
        "seeds": len(heldout),
        "untrained_loss": mean(untrained) if untrained else None,
        "evaluations": len(steps),
        "last_step": steps[-1],
        "min_step": steps[at_min],
        "min_loss": float(held[:, at_min].mean()),
        "final_loss": float(held[:, -1].mean()),
        "rise": mean(rises),
        "rise_std": stdev(rises) if len(rises) > 1 else None,
        "jitter": mean(jitters) if jitters else None,
        "noise": None if math.isnan(noise) else noise,
        "ratio": ratio,
    }
    train = _aligned(train_fixed) if train_fixed else None
    if train is not None and steps[at_min] in train[0]:
        t_steps, t_table = train
        i_min, i_last = t_steps.index(steps[at_min]), len(t_steps) - 1
        out["train_at_min"] = float(t_table[:, i_min].mean())
        out["train_final"] = float(t_table[:, i_last].mean())
        out["train_drop"] = out["train_at_min"] - out["train_final"]
        out["final_gap"] = out["final_loss"] - out["train_final"]
    if at_min == len(steps) - 1:
        out.update(turned_up=False, reason="held-out loss is lowest at the last evaluation")
    elif math.isnan(noise):
        out.update(turned_up=None, reason="one seed and too few evaluations to measure the noise")
    elif out.get("train_drop") is None:
        out.update(turned_up=None, reason="no train-subset curve to check that training loss kept falling")
    else:
        big = out["rise"] > ratio * noise
        falling = out["train_drop"] > 0
        out["turned_up"] = bool(big and falling)
        after = (
            f"train-subset loss fell by {out['train_drop']:.4f} after the minimum"
            if falling
            else f"train-subset loss did not fall after the minimum ({-out['train_drop']:+.4f})"
        )
        out["reason"] = f"rise {out['rise']:+.4f} {'>' if big else '<='} {ratio:g} x noise {noise:.4f}; {after}"
    return out


def find_turnups(curves: dict[str, Any], ratio: float = 3.0) -> list[dict[str, Any]]:
    """One verdict per (model, data, length) of a sweep's curves.json (run -> curves), its seeds read together."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in curves.values():
        if c.get("heldout"):
            groups[_cell_of(c)].append(c)
    out = []
    for (model, data, iterations), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        train = [r["train_fixed"] for r in runs if r.get("train_fixed")]
        verdict = turnup_of([r["heldout"] for r in runs], train if len(train) == len(runs) else [], ratio)
        out.append({"model": model, "data": data, "iterations": iterations, **verdict})
    return out


def turnup_markdown(entries: list[dict[str, Any]]) -> str:
    """The turn-up table for results.md: one row per (model, data, length)."""
    if not entries:
        return ""
    lines = [
        "## Held-out loss inside each run (over-fitting check)",
        "",
        "The held-out loss before training (*untrained*: what a model that learns nothing scores), the minimum of",
        "the seeds' mean held-out curve, each seed's rise from there to the end (mean ± sample std), the evaluation",
        "jitter, and whether the train-subset loss kept falling; *turned up* = mean rise > "
        f"{entries[0].get('ratio', 3):g} x the larger of the rise's std and the jitter, with the train-subset loss",
        "falling.",
        "",
        "| model | data | iterations | seeds | untrained | min at step | min loss | final loss | rise | jitter "
        "| train-subset drop | final gap | turned up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        rise = _num(e.get("rise"), "+.4f") + (f" ± {e['rise_std']:.4f}" if e.get("rise_std") is not None else "")
        call = {True: "**yes**", False: "no", None: "undecided"}[e.get("turned_up")]
        lines.append(
            f"| {e['model']} | {e['data']} | {_num(e.get('iterations'), 'g')} | {e['seeds']} "
            f"| {_num(e.get('untrained_loss'), '.4f')} "
            f"| {_num(e.get('min_step'), 'g')} | {_num(e.get('min_loss'), '.4f')} | {_num(e.get('final_loss'), '.4f')} "
            f"| {rise} | {_num(e.get('jitter'), '.4f')} | {_num(e.get('train_drop'), '+.4f')} "
            f"| {_num(e.get('final_gap'), '+.4f')} | {call} |"
        )
    return "\n".join(lines) + "\n"


def draw_turnups(curves: dict[str, Any], entries: list[dict[str, Any]], path: Path) -> Path:
    """The longest run of each (model, data): seeds' mean held-out curve (solid, ± std band) and train-subset curve
    (dashed) against epochs of the subset, the minimum marked (X where a turn-up was called), one panel per model."""
    from mimkit.scaling.plots import _panels, _plt, _save

    longest: dict[tuple, Any] = {}
    for e in entries:
        key = (e["model"], e["data"])
        if e.get("min_step") is not None and (key not in longest or e["iterations"] > longest[key]["iterations"]):
            longest[key] = e
    models = list(dict.fromkeys(k[0] for k in longest))
    datas = sorted({k[1] for k in longest}, key=lambda d: float(d) if _is_number(d) else math.inf)
    fig, axes = _panels(max(1, len(models)), "held-out loss (solid) and train-subset loss (dashed), fixed masks")
    colors = dict(zip(datas, _plt().cm.plasma(np.linspace(0, 0.8, max(len(datas), 1)))))
    for ax, model in zip(axes, models):
        images = None
        for data in datas:
            e = longest.get((model, data))
            if e is None:
                continue
            runs = [c for c in curves.values() if _cell_of(c) == (model, data, e["iterations"])]
            images = runs[0].get("data_images")  # None in curves.json files written before the turn-up check
            scale = runs[0].get("batch_size", 1) / images if images else 1.0  # steps -> epochs of the subset
            for split, style in (("heldout", "-"), ("train_fixed", "--")):
                aligned = _aligned([r[split] for r in runs if r.get(split)])
                if aligned is None:
                    continue
                steps, table = aligned
                x = np.array(steps) * scale
                m = table.mean(axis=0)
                label = f"data {data} ({len(runs)} seed{'s' if len(runs) > 1 else ''})" if split == "heldout" else None
                ax.plot(x, m, style, color=colors[data], lw=1.3, label=label)
                if len(runs) > 1:
                    s = table.std(axis=0, ddof=1)
                    ax.fill_between(x, m - s, m + s, color=colors[data], alpha=0.2, lw=0)
            marker = "X" if e["turned_up"] else "o"  # the minimum; X where a turn-up was called after it
            ax.plot([e["min_step"] * scale], [e["min_loss"]], marker, color=colors[data], ms=7)
        ax.set_title(model)
        ax.set_xlabel("epochs of the pretraining subset" if images else "steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (fixed masks)")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def _cell_of(run: dict[str, Any]) -> tuple[str, str, Any]:
    return str(run.get("model")), str(run.get("data")), run.get("iterations")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _num(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)
