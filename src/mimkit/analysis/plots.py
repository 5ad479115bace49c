"""Figures of an analysis, drawn from the numbers in results.json: per-head dots against layer with the layer mean
as a line (the Dark Secrets figure style), CKA heat maps, and attention maps over real images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]

HEAD_METRICS = {
    "distance": ("attention", "mean attention distance (px)", "Attention distance per head"),
    "distance_fraction": (
        "attention",
        "mean attention distance / image side",
        "Attention distance per head, as a fraction of the image side",
    ),
    "entropy": ("attention", "attention entropy (nats)", "Attention entropy per head"),
    "kl": ("diversity", "KL divergence to other heads (nats)", "Head diversity (KL, exact from the logits)"),
    "js": ("diversity", "JS divergence to other heads (nats, <= ln 2)", "Head diversity (Jensen-Shannon)"),
}
FIGURE_NAMES = {
    "distance": "attention_distance",
    "distance_fraction": "attention_distance_fraction",
    "entropy": "attention_entropy",
    "kl": "head_diversity",
    "js": "head_diversity_js",
}


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_head_metric(results: dict[str, Any], metric: str, out: Path, suffix: str = "") -> Path:
    """One panel per model (shared y axis): a dot per head at each layer and the layer mean as a line; the last
    panel overlays every model's layer means. `suffix` '_foreground' plots the foreground-only section."""
    section, ylabel, title = HEAD_METRICS[metric]
    per_model = results[section + suffix]
    if suffix:
        title += ", foreground patches only"
    labels = list(per_model)
    panels = len(labels) + (1 if len(labels) > 1 else 0)
    fig, axes = plt.subplots(1, panels, figsize=(3.3 * panels, 3.3), dpi=120, sharey=True, squeeze=False)
    rng = np.random.default_rng(0)  # a fixed horizontal jitter so that coinciding heads stay visible
    for i, label in enumerate(labels):
        ax, colour = axes[0, i], COLOURS[i % len(COLOURS)]
        values = np.asarray(per_model[label][metric])  # (layers, heads)
        layers = np.arange(1, values.shape[0] + 1)
        jitter = rng.uniform(-0.12, 0.12, size=values.shape)
        ax.scatter(
            (layers[:, None] + jitter).ravel(),
            values.ravel(),
            s=10,
            alpha=0.55,
            color=colour,
            edgecolors="none",
            label="heads",
        )
        ax.plot(layers, values.mean(1), color=colour, lw=2, marker="o", ms=4, label="layer mean")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("layer")
        ax.set_xticks(layers if len(layers) <= 12 else layers[::2])
        ax.grid(alpha=0.3)
    if panels > len(labels):
        ax = axes[0, -1]
        for i, label in enumerate(labels):
            values = np.asarray(per_model[label][metric])
            depth = values.shape[0]
            ax.plot(
                np.arange(1, depth + 1),
                values.mean(1),
                color=COLOURS[i % len(COLOURS)],
                lw=2,
                marker="o",
                ms=3,
                label=label,
            )
        ax.set_title("layer means", fontsize=10)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
    axes[0, 0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, out)


def _heatmap(ax, matrix: np.ndarray, title: str, xlabel: str, ylabel: str):
    image = ax.imshow(
        matrix,
        vmin=0,
        vmax=1,
        cmap="magma",
        origin="lower",
        extent=(0.5, matrix.shape[1] + 0.5, 0.5, matrix.shape[0] + 0.5),
    )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return image


def plot_cka(cka: dict[str, Any], out_dir: Path) -> list[Path]:
    """cka_within.png: each model's layer x layer CKA; cka_between.png: layer x layer CKA of each pair of models
    and their same-layer CKA (pairs of equal depth)."""
    paths = []
    within = cka["within"]
    n = len(within)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n + 0.8, 3.4), dpi=120, squeeze=False, layout="constrained")
    for ax, (label, matrix) in zip(axes[0], within.items()):
        image = _heatmap(ax, np.asarray(matrix), label, "layer", "layer")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label="linear CKA")
    fig.suptitle("CKA between the layers of each model", fontsize=11)
    paths.append(_save(fig, out_dir / "cka_within.png"))

    between = cka.get("between", {})
    if between:
        pairs = list(between)
        same = {p: np.diag(np.asarray(m)) for p, m in between.items() if len(m) == len(m[0])}
        cols = len(pairs) + (1 if same else 0)
        fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols + 0.8, 3.4), dpi=120, squeeze=False, layout="constrained")
        for ax, pair in zip(axes[0], pairs):
            a, b = pair.split(" vs ")
            image = _heatmap(ax, np.asarray(between[pair]), pair, f"{b} layer", f"{a} layer")
        fig.colorbar(image, ax=axes[0, : len(pairs)].tolist(), shrink=0.85, label="linear CKA")
        if same:
            ax = axes[0, -1]
            for i, (pair, diag) in enumerate(same.items()):
                ax.plot(
                    np.arange(1, len(diag) + 1),
                    diag,
                    marker="o",
                    ms=3,
                    lw=1.6,
                    label=pair,
                    color=COLOURS[i % len(COLOURS)],
                )
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("layer")
            ax.set_ylabel("CKA, same layer")
            ax.set_title("same layer across models", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(frameon=False, fontsize=7)
        fig.suptitle("CKA between models", fontsize=11)
        paths.append(_save(fig, out_dir / "cka_between.png"))
    return paths


def plot_attention_maps(maps: dict[str, Any], images: np.ndarray, out_dir: Path) -> list[Path]:
    """One figure per query: rows are (model, image), columns the image and then each layer's head-averaged
    attention of the query patch (outlined) over the image. Colour is attention times the number of patches (1 =
    uniform) on one scale for the whole figure, so near-uniform attention looks flat instead of being stretched."""
    paths = []
    labels = [k for k in maps if k not in ("queries", "image_ids")]
    for qi, query in enumerate(maps["queries"]):
        rows = [(label, i) for label in labels for i in range(len(images))]
        depth = max(len(maps[label]["rows"]) for label in labels)
        relative = {
            label: np.asarray(maps[label]["rows"])[:, :, qi] * np.prod(maps[label]["grid_size"]) for label in labels
        }  # (layers, images, patches), 1 = uniform
        vmax = max(2.0, float(np.percentile(np.concatenate([r.ravel() for r in relative.values()]), 99.5)))
        fig, axes = plt.subplots(
            len(rows),
            depth + 1,
            figsize=(1.25 * (depth + 1) + 0.9, 1.3 * len(rows) + 0.5),
            dpi=120,
            squeeze=False,
            layout="constrained",
        )
        shown = None
        for r, (label, i) in enumerate(rows):
            entry = maps[label]
            gh, gw = entry["grid_size"]
            qr, qc = entry["query_patches"][qi]
            image = images[i]
            h, w = image.shape[:2]
            axes[r, 0].imshow(image, cmap="gray" if image.ndim == 2 else None)
            axes[r, 0].set_ylabel(label if i == 0 else "", fontsize=8)
            for layer in range(depth + 1):
                ax = axes[r, layer]
                ax.set_xticks([])
                ax.set_yticks([])
                if layer == 0:
                    continue
                if layer > len(entry["rows"]):
                    ax.axis("off")
                    continue
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
                shown = ax.imshow(
                    relative[label][layer - 1, i].reshape(gh, gw),
                    cmap="inferno",
                    alpha=0.65,
                    vmin=0,
                    vmax=vmax,
                    extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                    interpolation="nearest",
                )
                cell_h, cell_w = h / gh, w / gw
                ax.add_patch(
                    plt.Rectangle(
                        (qc * cell_w - 0.5, qr * cell_h - 0.5), cell_w, cell_h, fill=False, edgecolor="cyan", lw=1.0
                    )
                )
        # every column headed on the top row, also where the top model is shallower than the deepest one
        for col in range(depth + 1):
            axes[0, col].set_title("image" if col == 0 else f"layer {col}", fontsize=8)
        if shown is not None:
            fig.colorbar(
                shown, ax=axes[:, 1:].ravel().tolist(), shrink=0.5, aspect=40, label="attention x patches (1 = uniform)"
            )
        fig.suptitle(
            f"attention of the query patch at ({query[0]:.2f}, {query[1]:.2f}) of the image height/width, "
            "mean over heads",
            fontsize=9,
        )
        paths.append(_save(fig, out_dir / f"attention_maps_q{qi}.png"))
    return paths


def plot_all(results: dict[str, Any], out_dir: Path, map_images: np.ndarray | None = None) -> list[Path]:
    """Every figure the sections present in `results` allow."""
    paths = []
    for suffix in ("", "_foreground"):
        for metric, (section, _, _) in HEAD_METRICS.items():
            found = results.get(section + suffix)
            if found and all(metric in v for v in found.values()):
                name = FIGURE_NAMES[metric] + suffix
                paths.append(plot_head_metric(results, metric, out_dir / f"{name}.png", suffix))
    if results.get("cka"):
        paths += plot_cka(results["cka"], out_dir)
    if results.get("maps") and map_images is not None:
        paths += plot_attention_maps(results["maps"], map_images, out_dir)
    return paths


PAIR_PANELS = [
    ("distance", "attention distance (px)"),
    ("entropy", "attention entropy (nats)"),
    ("kl", "head KL (nats)"),
    ("js", "head JS (nats)"),
]


def plot_pairs(pairs: list[dict[str, Any]], out: Path) -> Path:
    """One row per (pretrained, fine-tuned) pair: each metric's layer means before and after fine-tuning, and the
    CKA between the same layer of the two models when it was computed."""
    panels = [(m, label) for m, label in PAIR_PANELS if any(m in p["metrics"] for p in pairs)]
    with_cka = any("cka_same_layer" in p for p in pairs)
    cols = len(panels) + (1 if with_cka else 0)
    fig, axes = plt.subplots(len(pairs), cols, figsize=(3.2 * cols, 3.0 * len(pairs)), dpi=120, squeeze=False)
    for row, pair in enumerate(pairs):
        for col, (metric, ylabel) in enumerate(panels):
            ax = axes[row, col]
            values = pair["metrics"].get(metric)
            if values is None:
                ax.axis("off")
                continue
            layers = np.arange(1, len(values["before"]) + 1)
            ax.plot(layers, values["before"], marker="o", ms=3, lw=2, color=COLOURS[0], label=pair["pretrained"])
            ax.plot(layers, values["after"], marker="o", ms=3, lw=2, color=COLOURS[1], label=pair["finetuned"])
            ax.set_xlabel("layer")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.legend(frameon=False, fontsize=8)
        if with_cka:
            ax = axes[row, -1]
            if "cka_same_layer" in pair:
                cka = pair["cka_same_layer"]
                ax.plot(np.arange(1, len(cka) + 1), cka, marker="o", ms=3, lw=2, color=COLOURS[2])
                ax.set_ylim(0, 1.02)
                ax.set_xlabel("layer")
                ax.set_ylabel("CKA, same layer before vs after")
                ax.grid(alpha=0.3)
            else:
                ax.axis("off")
    fig.suptitle("Before and after fine-tuning", fontsize=11)
    fig.tight_layout()
    return _save(fig, out)
