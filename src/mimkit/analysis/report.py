"""`mimkit analyze report`: one self-contained HTML page (figures embedded as base64 PNG) with a short table per
model, readable offline in any browser and easy to attach to a message."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from mimkit.engine.atomic import atomic_write_text

FIGURES = [
    (
        "attention_distance.png",
        "Mean attention distance",
        "Pixels between a query patch and the patches it attends to, weighted by attention; one dot per head, the line "
        "is the layer mean. Local attention gives small values.",
    ),
    (
        "head_diversity.png",
        "Head diversity",
        "Mean KL divergence from each head's attention to the other heads of its layer, exact from the logits' "
        "log-softmax. Near zero: the heads of that layer attend alike (collapsed).",
    ),
    (
        "head_diversity_js.png",
        "Head diversity (Jensen-Shannon)",
        "Mean Jensen-Shannon divergence between each head and the other heads of its layer: symmetric and at most "
        "ln 2 = 0.69, so a few peaked heads cannot dominate a layer's mean as they can KL's.",
    ),
    (
        "attention_distance_fraction.png",
        "Attention distance as a fraction of the image side",
        "The attention distance divided by the image side (sqrt(H x W) in pixels), comparable across resolutions.",
    ),
    (
        "attention_entropy.png",
        "Attention entropy",
        "Entropy of each query's attention over the patches; log(patches) means uniform attention.",
    ),
    (
        "attention_distance_foreground.png",
        "Attention distance, foreground patches only",
        "Queries and keys restricted to foreground patches (each row renormalised over them): background attention "
        "sinks no longer count. Compare with the figure over all patches.",
    ),
    (
        "head_diversity_foreground.png",
        "Head diversity (KL), foreground patches only",
        "KL between heads over foreground queries and keys only.",
    ),
    (
        "head_diversity_js_foreground.png",
        "Head diversity (Jensen-Shannon), foreground patches only",
        "JS between heads over foreground queries and keys only.",
    ),
    (
        "finetune_change.png",
        "Before and after fine-tuning",
        "Each metric's layer means for a pretrained model and the same model fine-tuned, and the linear CKA between "
        "the same layer of the two.",
    ),
    ("cka_within.png", "CKA between layers", "Linear CKA between every pair of layers of each model."),
    ("cka_between.png", "CKA between models", "Linear CKA between the layers of two models on the same images."),
]


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def model_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """A summary per model: size, and first/last-layer means of each metric."""
    rows = []
    for label, info in results.get("models", {}).items():
        row = {
            "model": label,
            "source": info["description"],
            "params": info["params"],
            "shape": f"{info['depth']} layers x {info['heads']} heads, dim {info['embed_dim']}, "
            f"{info['img_size']} px / patch {info['patch_size'][0]}",
        }
        att = results.get("attention", {}).get(label)
        div = results.get("diversity", {}).get(label)
        if att:
            row["distance"] = (att["distance_layer_mean"][0], att["distance_layer_mean"][-1])
            row["entropy"] = (att["entropy_layer_mean"][0], att["entropy_layer_mean"][-1])
        if div:
            row["kl"] = (div["kl_layer_mean"][0], div["kl_layer_mean"][-1])
            if "js_layer_mean" in div:
                row["js"] = (div["js_layer_mean"][0], div["js_layer_mean"][-1])
        within = results.get("cka", {}).get("within", {}).get(label)
        if within:
            m = np.asarray(within)
            row["cka_offdiag"] = float((m.sum() - np.trace(m)) / max(1, m.size - len(m)))
        rows.append(row)
    return rows


def write_report(results: dict[str, Any], out_dir: Path, title: str = "mimkit model analysis") -> Path:
    rows = model_rows(results)
    header = (
        "<tr><th>model</th><th>source</th><th>architecture</th><th>params</th>"
        "<th>attention distance, first → last layer (px)</th><th>head KL, first → last</th>"
        "<th>head JS, first → last</th>"
        "<th>entropy, first → last</th><th>mean CKA between layers</th></tr>"
    )
    body = []
    for r in rows:
        pair = lambda key: f"{_fmt(r[key][0])} → {_fmt(r[key][1])}" if key in r else "–"  # noqa: E731
        body.append(
            f"<tr><td><b>{html.escape(r['model'])}</b></td><td>{html.escape(r['source'])}</td>"
            f"<td>{html.escape(r['shape'])}</td><td>{r['params'] / 1e6:.2f}M</td><td>{pair('distance')}</td>"
            f"<td>{pair('kl')}</td><td>{pair('js')}</td><td>{pair('entropy')}</td><td>{_fmt(r.get('cka_offdiag'))}</td></tr>"
        )
    sections = []
    for name, heading, caption in FIGURES:
        if (out_dir / name).is_file():
            sections.append(f"<h2>{heading}</h2><p>{caption}</p>{_embed(out_dir / name)}")
    for path in sorted(out_dir.glob("attention_maps_q*.png")):
        sections.append(
            f"<h2>Attention maps ({path.stem.split('_')[-1]})</h2><p>Head-averaged attention of one "
            f"query patch (outlined) in every layer, over held-out images.</p>{_embed(path)}"
        )
    settings = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
        for k, v in results.get("settings", {})
        .get("attention", next(iter(results.get("settings", {}).values()), {}))
        .items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }}
p {{ max-width: 60em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<ul>{settings}</ul>
<table>{header}{"".join(body)}</table>
{"".join(sections)}
<p style="color:#777">Every number behind these figures is in results.json beside this page.</p>
</body></html>
"""
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path
