"""Before and after fine-tuning, side by side (the Dark Secrets paper compares each model's attention pretrained and
fine-tuned): which analysed models are such pairs, and how each metric changed layer by layer.

A pair is found by itself when one model is a run whose `init` is another analysed model's source (`mimkit
finetune --init RUN` writes it), or is named with `--pair PRE,FT`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mimkit.config import ConfigError

# The per-layer means a pair compares: (results section, key).
PAIRED_METRICS = {
    "distance": ("attention", "distance_layer_mean"),
    "distance_fraction": ("attention", "distance_fraction_layer_mean"),
    "entropy": ("attention", "entropy_layer_mean"),
    "kl": ("diversity", "kl_layer_mean"),
    "js": ("diversity", "js_layer_mean"),
}


def _same_place(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def init_of(source: str) -> str | None:
    """The `init` a run directory was trained from (None for anything else: exports, timm, scratch)."""
    if not Path(source).is_dir():
        return None
    from mimkit.api import load_config_of

    try:
        cfg, _ = load_config_of(source)
    except Exception:  # noqa: BLE001 - not a run with a readable config: it pairs with nothing
        return None
    return cfg.init


def find_pairs(models: dict[str, str], explicit: list[str] | None = None) -> list[tuple[str, str]]:
    """(pretrained label, fine-tuned label) pairs among `models` (label -> source): the `explicit` PRE,FT names
    first, then every model whose run was initialised from another model's source."""
    pairs: list[tuple[str, str]] = []
    for text in explicit or []:
        names = [n.strip() for n in text.split(",")]
        if len(names) != 2 or not all(names):
            raise ConfigError(f"--pair {text}: give two model names, PRE,FT")
        unknown = [n for n in names if n not in models]
        if unknown:
            raise ConfigError(f"--pair {text}: no --model named {', '.join(unknown)} (models: {', '.join(models)})")
        pairs.append((names[0], names[1]))
    for label, source in models.items():
        init = init_of(source)
        if init is None:
            continue
        for other, other_source in models.items():
            if other != label and _same_place(init, other_source) and (other, label) not in pairs:
                pairs.append((other, label))
    return pairs


def pair_changes(results: dict[str, Any], pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Per pair: each metric's layer means before and after and their difference (after - before), and linear CKA
    between the same layer of the two models where CKA between models was computed."""
    out = []
    for pre, ft in pairs:
        entry: dict[str, Any] = {"pretrained": pre, "finetuned": ft, "metrics": {}}
        for metric, (section, key) in PAIRED_METRICS.items():
            a = results.get(section, {}).get(pre, {}).get(key)
            b = results.get(section, {}).get(ft, {}).get(key)
            if a is None or b is None or len(a) != len(b):
                continue
            entry["metrics"][metric] = {"before": a, "after": b, "change": [y - x for x, y in zip(a, b)]}
        between = results.get("cka", {}).get("between", {})
        matrix = between.get(f"{pre} vs {ft}", between.get(f"{ft} vs {pre}"))
        if matrix is not None and len(matrix) == len(matrix[0]):
            entry["cka_same_layer"] = [matrix[i][i] for i in range(len(matrix))]  # the same either way round
        out.append(entry)
    return out
