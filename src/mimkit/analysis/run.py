"""One pass over held-out images that feeds every requested analysis of every model, then results.json and the
figures. Models see the same images in the same minibatches, which is what cross-model CKA needs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mimkit.analysis.capture import AttentionCapture
from mimkit.analysis.cka import MinibatchCKA, gram
from mimkit.analysis.foreground import foreground_patches
from mimkit.analysis.models import AnalysedModel, load_models, match_channels
from mimkit.analysis.pairs import find_pairs, pair_changes
from mimkit.analysis.plots import plot_all, plot_pairs
from mimkit.analysis.stats import AttentionMaps, AttentionStats
from mimkit.config import Config, ConfigError, resolved
from mimkit.data.datasets import ImageSet, build_data
from mimkit.engine.atomic import atomic_write_text
from mimkit.engine.distributed import pick_device
from mimkit.engine.metrics import Progress

ANALYSES = ("attention", "diversity", "cka", "maps")
SECTIONS = ("attention", "diversity", "attention_foreground", "diversity_foreground", "cka", "maps")
CKA_TOKENS = ("all", "patch", "cls", "mean")


@dataclass
class AnalysisOptions:
    images: int = 1000
    batch_size: int = 64
    capture: str = "recompute"  # or "unfused": timm's own attention probabilities with the fused path off
    renormalize_distance: bool = False
    cka_tokens: str = "all"  # every token flattened per image; or patch tokens only, the class token, patch mean
    queries: list[tuple[float, float]] = field(default_factory=lambda: [(0.5, 0.5), (0.2, 0.2)])
    map_images: int = 4
    # attention and diversity a second time over foreground patches only (analysis/foreground.py), to show what
    # background attention sinks do to them; off by default (natural images have no uniform background)
    foreground: bool = False
    foreground_threshold: float = 0.1
    pairs: list[str] = field(default_factory=list)  # "PRE,FT" model names, besides the pairs found by `init`

    def validate(self) -> None:
        if self.images < 1:
            raise ConfigError(f"--images {self.images}: analyse at least 1 image")
        if self.batch_size < 4:
            raise ConfigError(
                f"--batch-size {self.batch_size}: CKA's unbiased estimator needs at least 4 images per minibatch"
            )
        if self.cka_tokens not in CKA_TOKENS:
            raise ConfigError(f"--cka-tokens {self.cka_tokens}: use one of {', '.join(CKA_TOKENS)}")
        if self.map_images < 1:
            raise ConfigError(f"--map-images {self.map_images}: draw at least 1 image")
        if not 0 < self.foreground_threshold < 1:
            raise ConfigError(
                f"--foreground-threshold {self.foreground_threshold}: a fraction of full scale, in (0, 1)"
            )
        if self.capture not in ("recompute", "unfused"):
            raise ConfigError(f"--capture {self.capture}: use recompute or unfused")
        for y, x in self.queries:
            if not (0 <= y < 1 and 0 <= x < 1):
                raise ConfigError(
                    f"--query {y},{x}: give the position as fractions of the image height and width, each in [0, 1)"
                )


def cka_representation(tokens: torch.Tensor, how: str, num_prefix_tokens: int) -> torch.Tensor:
    """(batch, features) per image from a block output (batch, tokens, dim)."""
    if how == "all":
        return tokens.flatten(1)
    if how == "patch":
        return tokens[:, num_prefix_tokens:].flatten(1)
    if how == "cls":
        if num_prefix_tokens == 0:
            raise ConfigError("--cka-tokens cls: this model has no class token")
        return tokens[:, 0]
    return tokens[:, num_prefix_tokens:].mean(1)


def analysis_images(cfg: Config, n: int, log: Callable = print) -> tuple[ImageSet, str]:
    """A seeded random sample of n held-out images (all of them when there are fewer), and where they came from."""
    data = build_data(cfg, log)
    heldout = data.heldout
    if n > len(heldout):
        log(f"[analyze] the held-out split has {len(heldout)} images; analysing all of them instead of {n}")
        n = len(heldout)
    order = torch.randperm(len(heldout), generator=torch.Generator().manual_seed(cfg.seed))[:n]
    return heldout.subset(order), f"{cfg.data.name} {data.heldout_source}"


def query_patch(query: tuple[float, float], grid: tuple[int, int]) -> tuple[int, int]:
    return min(grid[0] - 1, int(query[0] * grid[0])), min(grid[1] - 1, int(query[1] * grid[1]))


class _ModelPass:
    """The accumulators of one model and the capture callbacks that feed them."""

    def __init__(self, model: AnalysedModel, analyses: set[str], options: AnalysisOptions):
        g = model.geometry
        metrics = (("distance", "entropy") if "attention" in analyses else ()) + (
            ("kl", "js") if "diversity" in analyses else ()
        )
        self.model, self.options = model, options
        self.stats = AttentionStats(g, metrics, options.renormalize_distance) if metrics else None
        self.foreground = AttentionStats(g, metrics) if metrics and options.foreground else None
        self.mask: torch.Tensor | None = None  # this batch's foreground patches
        self.kept = [0, 0]  # foreground patches, all patches
        self.maps = (
            AttentionMaps(g, [query_patch(q, g.grid_size) for q in options.queries], options.map_images)
            if "maps" in analyses
            else None
        )
        self.want_cka = "cka" in analyses
        self.grams: list[torch.Tensor | None] = [None] * g.depth

    def on_attention(self, layer: int, captured: torch.Tensor) -> None:
        """Recompute capture hands log-probabilities (exact KL); unfused capture timm's probabilities, whose KL
        clamps the logarithm (metrics.py)."""
        exact = self.options.capture == "recompute"
        attn, log_attn = (captured.exp(), captured) if exact else (captured, None)
        if self.stats is not None:
            self.stats.update(layer, attn, log_attn)
        if self.foreground is not None:
            self.foreground.update(layer, attn, log_attn, self.mask)
        if self.maps is not None:
            self.maps.update(layer, attn)

    def on_features(self, layer: int, tokens: torch.Tensor) -> None:
        rep = cka_representation(tokens, self.options.cka_tokens, self.model.geometry.num_prefix_tokens)
        self.grams[layer] = gram(rep)

    @torch.no_grad()
    def forward(self, raw: torch.Tensor) -> torch.Tensor | None:
        """Run the model on a uint8 batch; returns this batch's (layers, n, n) Gram stack when CKA is on."""
        wants_attention = self.stats is not None or self.maps is not None
        if self.foreground is not None:
            g, d = self.model.geometry, self.model.cfg.data
            images = match_channels(raw, d.in_chans)
            self.mask = foreground_patches(images, d.img_size, g.patch_size[0], self.options.foreground_threshold)
            self.mask = self.mask.to(raw.device)
            self.kept[0] += int(self.mask.sum())
            self.kept[1] += self.mask.numel()
        with AttentionCapture(
            self.model.encoder,
            self.on_attention if wants_attention else None,
            self.on_features if self.want_cka else None,
            mode=self.options.capture,
            log_space=self.options.capture == "recompute",
        ):
            self.model.encoder.forward_features(self.model.prepare(raw))
        return torch.stack(self.grams) if self.want_cka else None


def run_analysis(
    cfg: Config,
    specs: list[str],
    analyses: set[str],
    out: str | Path,
    options: AnalysisOptions | None = None,
    log: Callable = print,
) -> dict[str, Any]:
    """Analyse every model in `specs` on the same held-out images; merge the sections into OUT/results.json (so
    separate commands can share a directory) and draw the figures."""
    options = options or AnalysisOptions()
    options.validate()
    unknown = set(analyses) - set(ANALYSES)
    if unknown or not analyses:
        raise ConfigError(f"unknown analyses {sorted(unknown)}; choose from {', '.join(ANALYSES)}")
    cfg = resolved(cfg)
    out = Path(out)
    device = pick_device(cfg.device)
    models = load_models(specs, cfg, device)
    pairs = find_pairs({m.label: m.source for m in models}, options.pairs)
    images, where = analysis_images(cfg, options.images, log)
    if "cka" in analyses and len(images) < 4:
        raise ConfigError(
            f"cka needs at least 4 images (its unbiased estimator is undefined below that); "
            f"{len(images)} available. Raise --images or use a larger held-out split"
        )
    passes = [_ModelPass(m, analyses, options) for m in models]
    cka = MinibatchCKA(len(models)) if "cka" in analyses else None
    n = len(images)
    log(f"[analyze] {', '.join(sorted(analyses))} of {len(models)} model(s) on {n} held-out images ({where})")
    progress = Progress(
        total=n, start=0, enabled=True, every=max(1, options.batch_size * 4), label="analyze", unit="images"
    )
    t0 = time.time()
    for start in range(0, n, options.batch_size):
        raw = images.images[start : start + options.batch_size].to(device)
        grams = [p.forward(raw) for p in passes]
        if cka is not None:
            cka.update(grams)
        done = min(n, start + options.batch_size)
        rate = done / max(time.time() - t0, 1e-9)
        progress.advance(done, f"{rate:,.0f} img/s  eta {(n - done) / max(rate, 1e-9):.0f}s")
    progress.close()

    results = collect(passes, cka, options, images, cfg)
    results["settings"]["images_from"] = where
    merged = merge_results(out / "results.json", results)
    if pairs:
        merged["pairs"] = pair_changes(merged, pairs)
    atomic_write_text(out / "results.json", json.dumps(merged, indent=1))
    map_images = _display_images(images, options.map_images) if "maps" in analyses else None
    figures = plot_all(results, out, map_images)
    if merged.get("pairs"):
        figures.append(plot_pairs(merged["pairs"], out / "finetune_change.png"))
    log(f"[analyze] wrote {out / 'results.json'} and {len(figures)} figure(s) in {out}")
    return merged


def collect(
    passes: list[_ModelPass], cka: MinibatchCKA | None, options: AnalysisOptions, images: ImageSet, cfg: Config
) -> dict[str, Any]:
    """The results sections of this pass: settings, models, attention, diversity, cka, maps."""
    labels = [p.model.label for p in passes]
    settings = {
        "images": len(images),
        "data": cfg.data.name,
        "data_root": cfg.data.root,
        "seed": cfg.seed,
        "batch_size": options.batch_size,
        "capture": options.capture,
        "prefix_tokens": "dropped; distance rows "
        + ("renormalised" if options.renormalize_distance else "not renormalised")
        + "; entropy, KL and JS rows renormalised",
        "head_divergence": "KL and JS from log-softmax of the logits (exact)"
        if options.capture == "recompute"
        else "KL from timm's probabilities, clamped at float32's tiniest normal; JS needs no clamp",
        "foreground": f"patches deviating > {options.foreground_threshold} from the border level"
        if options.foreground
        else "off",
        "cka_tokens": options.cka_tokens,
        "cka_estimator": "minibatch unbiased HSIC (Nguyen et al.)",
    }
    results: dict[str, Any] = {"settings": settings, "models": {p.model.label: p.model.info() for p in passes}}
    for p in passes:
        for stats, suffix in ((p.stats, ""), (p.foreground, "_foreground")):
            if stats is None:
                continue
            summary = stats.summary()
            extra = {"patches_kept": p.kept[0] / max(p.kept[1], 1)} if suffix else {}
            if "distance" in stats.metrics:
                keys = ("distance", "distance_fraction", "entropy")
                results.setdefault(f"attention{suffix}", {})[p.model.label] = {
                    **{k: summary[k] for k in keys},
                    **{f"{k}_layer_mean": summary[f"{k}_layer_mean"] for k in keys},
                    "images": summary["images"],
                    **extra,
                }
            if "kl" in stats.metrics:
                keys = ("kl", "kl_layer_mean", "kl_pairwise", "js", "js_layer_mean", "js_pairwise", "images")
                results.setdefault(f"diversity{suffix}", {})[p.model.label] = {
                    **{k: summary[k] for k in keys},
                    **extra,
                }
    if cka is not None:
        results["cka"] = {
            "within": {label: cka.within(i).tolist() for i, label in enumerate(labels)},
            "between": {
                f"{labels[i]} vs {labels[j]}": cka.between(i, j).tolist()
                for i in range(len(labels))
                for j in range(i + 1, len(labels))
            },
            "images": cka.images,
            "minibatches": cka.batches,
        }
    if passes and passes[0].maps is not None:
        maps: dict[str, Any] = {
            "queries": [list(q) for q in options.queries],
            "image_ids": images.ids[: options.map_images].tolist(),
        }
        for p in passes:
            maps[p.model.label] = {
                "grid_size": list(p.model.geometry.grid_size),
                "query_patches": [list(q) for q in p.maps.queries],
                "rows": p.maps.tensor().tolist(),
            }
        results["maps"] = maps
    return results


def merge_results(path: Path, new: dict[str, Any]) -> dict[str, Any]:
    """Sections of an earlier results.json in the same directory are kept unless this pass recomputed them."""
    old: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
    merged = {**old}
    for key, value in new.items():
        if key in ("models",):
            merged[key] = {**old.get(key, {}), **value}
        elif key == "settings":
            sections = [s for s in SECTIONS if s in new]
            merged["settings"] = {**old.get("settings", {}), **{s: value for s in sections}}
        else:
            merged[key] = value
    for section in ("attention", "diversity"):  # a foreground section of older numbers would not match
        if section in new and f"{section}_foreground" not in new:
            merged.pop(f"{section}_foreground", None)
            merged.get("settings", {}).pop(f"{section}_foreground", None)
    return merged


def _display_images(images: ImageSet, n: int) -> np.ndarray:
    """(n, H, W) gray or (n, H, W, 3) colour uint8 images for the attention-map figures."""
    x = images.images[:n]
    if x.shape[1] == 1:
        return x[:, 0].numpy()
    return match_channels(x, 3).permute(0, 2, 3, 1).numpy()


def replot(cfg: Config, out: str | Path, log: Callable = print) -> dict[str, Any]:
    """Redraw every figure of OUT/results.json without recomputing anything (the attention-map images are looked
    up by sample id in the held-out split of `cfg`'s data)."""
    out = Path(out)
    path = out / "results.json"
    if not path.is_file():
        raise ConfigError(f"replot: {path} does not exist; run an analysis into {out} first")
    results = json.loads(path.read_text())
    map_images = None
    if "maps" in results:
        heldout = build_data(resolved(cfg), log).heldout
        position = {int(i): k for k, i in enumerate(heldout.ids.tolist())}
        wanted = results["maps"]["image_ids"]
        missing = [i for i in wanted if i not in position]
        if missing:
            raise ConfigError(
                f"replot: attention-map images {missing[:5]} are not in the held-out split of "
                f"{cfg.data.name}; pass the --data/--set the analysis used"
            )
        map_images = _display_images(heldout.subset([position[i] for i in wanted]), len(wanted))
    figures = plot_all(results, out, map_images)
    log(f"[analyze] redrew {len(figures)} figure(s) in {out}")
    return results
