"""`mimkit analyze seeds`: several analyses of the same models, each pretrained (or drawn) with another seed, read
together as layer means with their spread across seeds, so that a difference between models can be weighed
against what a seed alone changes. Each input is the --out of one `mimkit analyze report` run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mimkit.analysis.plots import COLOURS, HEAD_METRICS, _save  # noqa: E402
from mimkit.config import ConfigError  # noqa: E402
from mimkit.engine.atomic import atomic_write_text  # noqa: E402

SECTIONS = ("attention", "diversity", "attention_foreground", "diversity_foreground")
TAIL_LAYERS = 3  # "the last layers" of the Dark Secrets claims: the mean over the last three


def load_seed_results(dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Each directory's results.json, with an error that names the directory and the fix when one is unusable."""
    if len(dirs) < 2:
        raise ConfigError(f"analyze seeds needs at least 2 analyses (--from DIR, repeated); got {len(dirs)}")
    out = []
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise ConfigError(f"--from {d}: no results.json there; give the --out of a `mimkit analyze report` run")
        try:
            out.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ConfigError(f"--from {d}: results.json is not valid JSON ({err}); re-run that analysis") from None
    return out


def _spread(values: np.ndarray) -> dict[str, Any]:
    """Mean and sample standard deviation over the first axis (seeds)."""
    std = values.std(0, ddof=1) if len(values) > 1 else np.zeros_like(values[0])
    return {"mean": values.mean(0).tolist(), "std": std.tolist(), "seeds": len(values)}


def _model_names(runs: list[dict[str, Any]], dirs: list[str]) -> list[str]:
    names = list(runs[0].get("models", {}))
    for run, d in zip(runs[1:], dirs[1:]):
        other = list(run.get("models", {}))
        if sorted(other) != sorted(names):
            raise ConfigError(
                f"--from {d}: its models ({', '.join(other)}) differ from {dirs[0]}'s ({', '.join(names)}); "
                "give every seed's analysis the same model names"
            )
    return names


def aggregate_seeds(runs: list[dict[str, Any]], dirs: list[str]) -> dict[str, Any]:
    """Per section, model and metric: the layer means' mean and std over the runs; CKA's layer-1-vs-last and mean
    between-layer similarity likewise. A section or metric is kept only when every run has it."""
    names = _model_names(runs, dirs)
    layers: dict[str, Any] = {}
    for section in SECTIONS:
        if not all(section in run for run in runs):
            continue
        layers[section] = {}
        for name in names:
            metrics = [k[: -len("_layer_mean")] for k in runs[0][section][name] if k.endswith("_layer_mean")]
            metrics = [m for m in metrics if all(f"{m}_layer_mean" in run[section][name] for run in runs)]
            per_metric = {}
            for metric in metrics:
                curves = [run[section][name][f"{metric}_layer_mean"] for run in runs]
                if len({len(c) for c in curves}) != 1:
                    raise ConfigError(
                        f"model '{name}' has {sorted({len(c) for c in curves})} layers in different analyses: "
                        "a seed's model must have the same architecture"
                    )
                curves = np.asarray(curves, dtype=float)
                per_metric[metric] = {**_spread(curves), "tail": _spread(curves[:, -TAIL_LAYERS:].mean(1))}
            layers[section][name] = per_metric
    cka: dict[str, Any] = {}
    if all("cka" in run for run in runs):
        for name in names:
            mats = [np.asarray(run["cka"]["within"][name], dtype=float) for run in runs]
            first_last = np.asarray([m[0, -1] for m in mats])
            between = np.asarray([(m.sum() - np.trace(m)) / max(1, m.size - len(m)) for m in mats])
            cka[name] = {"first_vs_last": _spread(first_last), "mean_between_layers": _spread(between)}
    return {"seeds": len(runs), "from": [str(d) for d in dirs], "models": names, "layers": layers, "cka": cka}


def _pm(stat: dict[str, Any], index: int | None, digits: int) -> str:
    """'mean ± std' of one layer, or of the last layers' mean when index is None."""
    if index is None:
        mean, std = stat["tail"]["mean"], stat["tail"]["std"]
    else:
        mean, std = stat["mean"][index], stat["std"][index]
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def seeds_markdown(agg: dict[str, Any]) -> str:
    """One table per section: each metric at layer 1, the last layer and the mean of the last three layers."""
    lines = [f"# Attention metrics over {agg['seeds']} seeds (mean ± sample std)", ""]
    for section, per_model in agg["layers"].items():
        metrics = [m for m in HEAD_METRICS if all(m in per_model[name] for name in per_model)]
        if not metrics:
            continue
        lines += [f"## {section.replace('_', ', ')}", ""]
        header = ["model"] + [f"{m}: layer 1 / last / last {TAIL_LAYERS}" for m in metrics]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, stats in per_model.items():
            cells = [name]
            for m in metrics:
                digits = 1 if m == "distance" else 3
                cells.append(" / ".join(_pm(stats[m], i, digits) for i in (0, -1, None)))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if agg["cka"]:
        lines += ["## CKA within each model", "", "| model | layer 1 vs last | mean between layers |", "|---|---|---|"]
        for name, stats in agg["cka"].items():
            fl, mb = stats["first_vs_last"], stats["mean_between_layers"]
            lines.append(f"| {name} | {fl['mean']:.3f} ± {fl['std']:.3f} | {mb['mean']:.3f} ± {mb['std']:.3f} |")
        lines.append("")
    inputs = ", ".join(agg["from"])
    lines += [f"last {TAIL_LAYERS}: each seed's mean over its last {TAIL_LAYERS} layers. Inputs: {inputs}", ""]
    return "\n".join(lines)


def plot_seed_bands(agg: dict[str, Any], section: str, metric: str, out: Path) -> Path:
    """Every model's layer mean over seeds as a line, its ± one std across seeds as a band."""
    _, ylabel, title = HEAD_METRICS[metric]
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    for i, (name, stats) in enumerate(agg["layers"][section].items()):
        mean, std = np.asarray(stats[metric]["mean"]), np.asarray(stats[metric]["std"])
        layers = np.arange(1, len(mean) + 1)
        colour = COLOURS[i % len(COLOURS)]
        ax.plot(layers, mean, color=colour, lw=2, marker="o", ms=3, label=name)
        ax.fill_between(layers, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    where = ", foreground patches only" if section.endswith("_foreground") else ""
    ax.set_title(f"{title}{where}: layer means, ± std over {agg['seeds']} seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def run_seeds(dirs: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Read the analyses, write seeds.json, seeds.md and one band figure per (section, metric) under `out`."""
    dirs = [str(d) for d in dirs]
    agg = aggregate_seeds(load_seed_results(dirs), dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "seeds.json", json.dumps(agg, indent=1))
    atomic_write_text(out / "seeds.md", seeds_markdown(agg))
    figures = []
    for section, per_model in agg["layers"].items():
        suffix = "_foreground" if section.endswith("_foreground") else ""
        for metric in HEAD_METRICS:
            if all(metric in stats for stats in per_model.values()):
                name = f"seeds_{metric}{suffix}.png"
                figures.append(str(plot_seed_bands(agg, section, metric, out / name)))
    agg["figures"] = figures
    return agg
