"""Data sets as uint8 tensors in memory (or memmap), nested training subsets and a fixed held-out split.

A data set here is just `ImageSet(images uint8 (N, C, S, S), labels, ids)`; `ids` are stable sample identities
(position in the full training set) that key every random choice about a sample (see keyed_random).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mimkit.data import fashion_mnist, folder
from mimkit.data.imageset import DataBundle, ImageSet
from mimkit.data.tasks import (
    make_cluttered_localization,
    make_depth,
    make_localization,
    make_rotation,
    make_tracking,
)
from mimkit.data.webdataset.build import build_webdataset
from mimkit.errors import ConfigError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
FMNIST_MEAN = [0.2860]
FMNIST_STD = [0.3530]


def default_normalization(name: str, in_chans: int) -> tuple[list[float], list[float]]:
    if name == "fashion-mnist":
        mean, std = FMNIST_MEAN, FMNIST_STD
    elif name == "synthetic":
        mean, std = [0.5], [0.25]
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if in_chans == 3 and len(mean) == 1:
        mean, std = mean * 3, std * 3
    if in_chans == 1 and len(mean) == 3:
        mean, std = [float(np.mean(mean))], [float(np.mean(std))]
    return list(mean), list(std)


def nested_subset(labels: torch.Tensor | None, n: int, fraction: float, seed: int) -> torch.Tensor:
    """Positions of a `fraction` subset. One seeded permutation per class, subsets are prefixes of it: so for the
    same seed 0.1 is inside 0.2 inside 0.5 inside 1.0, and each class keeps its share (class-balanced)."""
    if fraction >= 1.0:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    if labels is None:
        order = torch.randperm(n, generator=gen)
        return torch.sort(order[: max(1, round(n * fraction))]).values
    picked = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        order = members[torch.randperm(len(members), generator=gen)]
        picked.append(order[: max(1, round(len(members) * fraction))])
    return torch.sort(torch.cat(picked)).values


def split_heldout(labels: torch.Tensor | None, n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train positions, held-out positions): a seeded class-balanced `fraction` of train, fixed per seed."""
    held = nested_subset(labels, n, fraction, seed + 7919)
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    return torch.nonzero(keep).flatten(), held


def _to_chw(images: np.ndarray, channels: int) -> torch.Tensor:
    t = torch.from_numpy(np.array(images, copy=True))  # idx buffers are read-only
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.shape[1] == 1 and channels == 3:
        t = t.expand(-1, 3, -1, -1).contiguous()
    return t


def _load_fashion_mnist(cfg: Any, log: Callable) -> tuple[ImageSet, ImageSet | None, list[str], list[str]]:
    directory = fashion_mnist.locate(cfg.data.root, allow_download=cfg.data.download)
    train_x, train_y = fashion_mnist.load_split(directory, "train")
    test_x, test_y = fashion_mnist.load_split(directory, "test")
    c = cfg.data.in_chans
    train = ImageSet(_to_chw(train_x, c), torch.from_numpy(train_y), torch.arange(len(train_y)))
    test = ImageSet(_to_chw(test_x, c), torch.from_numpy(test_y), torch.arange(len(test_y)) + 10_000_000)
    return train, test, list(fashion_mnist.CLASSES), []


SPLIT_NAMES = ("train", "val", "validation", "test")


def split_tree(root: str, val_root: str | None, log: Callable) -> tuple[str, str | None]:
    """A folder whose top level is `train/` plus `val/` (or `validation/`, `test/`) holds splits, not classes:
    train on train/, hold out the other (never read both as two classes, which would leak held-out images into
    training). Split folders beside class folders are ambiguous and refused."""
    top = Path(root)
    if val_root or not top.is_dir():
        return root, val_root
    subdirs = {p.name for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")}
    splits = [name for name in SPLIT_NAMES if name in subdirs]
    if "train" not in splits or len(splits) < 2:
        return root, val_root
    others = sorted(subdirs - set(SPLIT_NAMES))
    held = next(name for name in SPLIT_NAMES[1:] if name in subdirs)
    if others:
        raise ConfigError(
            f"data.root '{root}' holds split folders ({', '.join(splits)}) beside other folders "
            f"({', '.join(others) or 'none'}): set data.root to the training tree and data.val_root to the held-out "
            "one"
        )
    unused = [name for name in splits if name not in ("train", held)]
    note = f"; {', '.join(unused)}/ not read" if unused else ""
    log(f"[data] '{root}' holds train/ and {held}/: training on train/, holding out {held}/ (data.val_root){note}")
    return str(top / "train"), str(top / held)


def _load_folder(root: str, cfg: Any, log: Callable, id_offset: int = 0) -> tuple[ImageSet, list[str], list[str]]:
    d = cfg.data
    decoded = folder.load_folder(root, d.decode_size, d.in_chans, d.num_workers, log, d.max_pixels)
    with warnings.catch_warnings():  # a read-only memmap: mimkit never writes into data tensors
        warnings.simplefilter("ignore", UserWarning)
        images = torch.from_numpy(decoded.images)
    labels = torch.from_numpy(decoded.labels) if decoded.labels is not None else None
    ids = torch.arange(len(images)) + id_offset
    return ImageSet(images, labels, ids), decoded.classes, decoded.skipped


def _synthetic(n: int, channels: int, size: int, seed: int, id_offset: int = 0) -> ImageSet:
    """Smooth random images (low-frequency noise), for benchmarks and tests that need no real data."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 4, 4, generator=gen)
    images = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ImageSet(images, labels, torch.arange(n) + id_offset)


def _align_labels(labels: torch.Tensor | None, own: list[str], reference: list[str], root: str) -> torch.Tensor | None:
    """Held-out class folders numbered like the training set's (a val tree may lack some classes)."""
    if labels is None or not reference:
        return None if not reference else labels
    unknown = sorted(set(own) - set(reference))
    if unknown:
        raise folder.FolderError(
            f"data.val_root '{root}' has class folders the training set lacks: {', '.join(unknown[:5])}"
        )
    mapping = torch.tensor([reference.index(name) for name in own], dtype=torch.int64)
    return mapping[labels]


def build_data(cfg: Any, log: Callable = print) -> DataBundle:
    """Train set (nested `data.fraction` subset) and held-out set, as the config asks. For data.name=webdataset
    the train set is a ShardSet, streamed from tar shards (see data/webdataset/)."""
    d = cfg.data
    if d.name == "webdataset":
        return build_webdataset(cfg, log)
    classes: list[str] = []
    skipped: list[str] = []
    heldout: ImageSet | None = None
    source = ""
    if d.name == "fashion-mnist":
        full, heldout, classes, skipped = _load_fashion_mnist(cfg, log)
        source = "test split"
    elif d.name == "folder":
        root, val_root = split_tree(d.root, d.val_root, log)
        full, classes, skipped = _load_folder(root, cfg, log)
        if val_root:
            heldout, val_classes, val_skipped = _load_folder(val_root, cfg, log, id_offset=10_000_000)
            heldout.labels = _align_labels(heldout.labels, val_classes, classes, val_root)
            skipped += val_skipped
            source = f"val_root {val_root}"
    else:
        if d.root or d.val_root:
            raise ConfigError(
                "data.name=synthetic makes its own images and reads no files: drop data.root / data.val_root, or "
                "set data.name=folder (or fashion-mnist) to use them"
            )
        full = _synthetic(d.synthetic_size, d.in_chans, d.decode_size, cfg.seed)
    if d.class_subset is not None:
        known = len(classes) if classes else (int(full.labels.max()) + 1 if full.labels is not None else 0)
        unknown = [c for c in d.class_subset if c >= known]
        if full.labels is None or unknown:
            raise ConfigError(
                f"data.class_subset: {d.class_subset} names classes {unknown or d.class_subset} that the data set "
                f"does not have ({known} classes: {', '.join(classes) or 'unlabelled'})"
            )
        full = keep_classes(full, d.class_subset)
        heldout = keep_classes(heldout, d.class_subset) if heldout is not None else None
        classes = [classes[c] for c in d.class_subset] if classes else []
    if d.val_fraction is not None or heldout is None:
        fraction = d.val_fraction if d.val_fraction is not None else 0.05
        if len(full) < 2:
            raise folder.FolderError(f"need at least 2 images to split off a held-out set, found {len(full)}")
        train_pos, held_pos = split_heldout(full.labels, len(full), fraction, cfg.seed)
        heldout = full.subset(held_pos)
        full = full.subset(train_pos)
        source = f"{fraction:.0%} of train (seeded)"
    train = full.subset(nested_subset(full.labels, len(full), d.fraction, cfg.seed)) if d.fraction < 1 else full
    n_classes = len(classes) or (int(full.labels.max()) + 1 if full.labels is not None and len(full) else 0)
    if d.fraction < 1 and d.fraction * len(full) < max(n_classes, 1):
        raise ConfigError(
            f"data.fraction={d.fraction:g} of {len(full)} training images is {d.fraction * len(full):.3g} images, "
            f"fewer than the {n_classes} classes (the subset would be padded to one per class): raise data.fraction "
            f"to at least {max(n_classes, 1) / len(full):.2g}"
        )
    if d.task != "classification":  # drawn image by image: tens of seconds for the full set, so it says so
        t0 = time.time()
        log(f"[data] {d.task}: drawing {len(train) + len(heldout):,} scenes (train and held-out)")
        train, heldout = as_task(train, cfg), as_task(heldout, cfg)
        log(f"[data] {d.task}: {len(train) + len(heldout):,} scenes in {time.time() - t0:.0f} s")
    return DataBundle(train, heldout, source, classes, skipped)


def keep_classes(data: ImageSet, subset: list[int]) -> ImageSet:
    """The images of the classes in `subset`, relabelled 0..k-1 in the order of `subset`."""
    relabel = torch.full((max(int(data.labels.max()), max(subset)) + 1,), -1, dtype=torch.int64)
    relabel[torch.tensor(subset)] = torch.arange(len(subset))
    kept = data.subset(torch.nonzero(relabel[data.labels] >= 0).flatten())
    kept.labels = relabel[kept.labels]
    return kept


def as_task(data: ImageSet, cfg: Any) -> ImageSet:
    """The geometric version of a labelled set: localisation canvases (plain or cluttered) and depth scenes at the
    network size, rotations, or tracking's pairs of frames (stacked on the channel axis)."""
    d = cfg.data
    if d.task == "rotation":
        task = make_rotation(data, d.rotation_max, cfg.seed)
    elif d.task in ("cluttered_localization", "cluttered_combined", "keypoints"):
        target = "keypoints" if d.task == "keypoints" else "box"
        task = make_cluttered_localization(data, d.img_size, tuple(d.task_scale), cfg.seed, d.distractors, target)
    elif d.task == "depth":
        task = make_depth(data, d.img_size, seed=cfg.seed)
    elif d.task == "tracking":
        task = make_tracking(data, d.img_size, seed=cfg.seed, distractors=d.distractors, max_shift=d.track_shift)
    else:
        task = make_localization(data, d.img_size, tuple(d.task_scale), cfg.seed)
    return ImageSet(task.images, task.labels, task.ids, task.targets)
