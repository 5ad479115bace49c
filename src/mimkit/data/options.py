"""The `data:` config section: its keys, their checks and their derived defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mimkit.errors import check, one_of

DATA_SETS = ("fashion-mnist", "folder", "synthetic", "webdataset")
DECODERS = ("pil", "device")  # data.decode: where streamed shard images are decoded
MAX_IMG_SIZE = 4096  # px: SwinV2-G fine-tunes at 640; one 3 x 4096^2 float image is already 200 MB
TASKS = (
    "classification",
    "localization",
    "rotation",
    "combined",
    "cluttered_localization",
    "cluttered_combined",
    "keypoints",
    "depth",
    "tracking",
)
COMBINED_TASKS = ("combined", "cluttered_combined")  # class + box: their two losses are compared (Figure 8)


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # fashion-mnist | folder | synthetic | webdataset
    root: str | None = None  # data directory; fashion-mnist also looks in $MIMKIT_DATA and Debian's package;
    # webdataset: a directory of .tar shards, a glob, or a brace pattern such as /x/train-{000000..000099}.tar
    val_root: str | None = None  # folder data: a separate held-out tree; webdataset: held-out shards
    fraction: float = 1.0  # nested, class-balanced subset of the training set (0.1 inside 0.2 inside ... 1.0)
    val_fraction: float | None = None  # held-out = seeded fraction of train; None: the test split / val_root, else 0.05
    img_size: int = 32  # network input size (Fashion-MNIST's 28 px are resized)
    # with `init`: false trains at the image size the weights were trained at; true trains at data.img_size and
    # resamples what depends on it: a ViT's position embedding (bicubic), the BEiT family's relative position bias
    # table, a SwinV2's windows (model.window_size; its continuous position bias carries over)
    resize_init: bool = False
    in_chans: int | None = None  # None: 1 for gray data sets, 3 otherwise
    decode_size: int | None = None  # folder data: images are decoded once to this square size (None: img_size*8/7)
    crop_scale: list[float] | None = None  # RandomResizedCrop scale; None: method default (MAE 0.2-1, SimMIM 0.67-1)
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: bool = True
    mean: list[float] | None = None  # None: per data set (ImageNet stats for folders)
    std: list[float] | None = None
    num_workers: int = 0  # worker processes: folder decoding, webdataset decoding, RandAugment (persistent)
    shuffle_buffer: int = 1000  # webdataset: samples in each process's shuffle buffer
    decode: str = "pil"  # webdataset: pil (in the workers) | device (JPEGs on the training device: nvjpeg on CUDA)
    download: bool = True  # fashion-mnist: download to ~/.cache/mimkit when not found locally
    # folder data: images whose header declares more pixels (width x height) are skipped and counted, undecoded
    # (decompression bombs); the default is PIL's own threshold
    max_pixels: int = 89_478_485
    synthetic_size: int = 512  # synthetic data: number of train images (benchmarks and tests)
    # classification | localization | rotation | combined (class + box) | cluttered_localization | cluttered_combined
    # (class + box among clutter) | keypoints | depth | tracking
    task: str = "classification"
    # localization, combined and the cluttered tasks, keypoints: item side / canvas side (tracking: 0.3-0.5, fixed)
    task_scale: list[float] = field(default_factory=lambda: [0.3, 0.8])
    # cluttered_localization, cluttered_combined, keypoints, tracking: fragments of other items on the textured
    # background
    distractors: int = 2
    track_shift: float = 0.25  # tracking: the item's largest move per axis, as a fraction of the canvas side
    # keep only these classes (indices into the data set's classes), relabelled 0..k-1 in this order, in train and
    # held-out: a fine-grained task (Fashion-MNIST's tops: [0, 2, 4, 6]) or one side of a concept split
    class_subset: list[int] | None = None
    rotation_max: float = 90.0  # rotation: angles uniform in [-max, max] degrees


def validate_data(cfg: Any) -> None:
    d = cfg.data
    one_of("data.name", d.name, list(DATA_SETS))
    check(0.0 < d.fraction <= 1.0, f"data.fraction: {d.fraction} must be in (0, 1]")
    check(
        d.val_fraction is None or 0.0 < d.val_fraction < 1.0,
        f"data.val_fraction: {d.val_fraction} must be in (0, 1) or null",
    )
    check(
        0 < d.img_size <= MAX_IMG_SIZE,
        f"data.img_size: {d.img_size} must be in [1, {MAX_IMG_SIZE}] px (a batch at {d.img_size} px would not fit "
        "in memory)"
        if d.img_size > MAX_IMG_SIZE
        else f"data.img_size: {d.img_size} must be positive",
    )
    check(
        2 <= d.synthetic_size <= 10**7,
        f"data.synthetic_size: {d.synthetic_size} must be in [2, 10**7] (train and held-out, in memory)",
    )
    check(
        d.decode_size is None or 0 < d.decode_size <= 2 * MAX_IMG_SIZE,
        f"data.decode_size: {d.decode_size} must be in [1, {2 * MAX_IMG_SIZE}] px or null",
    )
    check(0 <= d.num_workers <= 512, f"data.num_workers: {d.num_workers} must be in [0, 512]")
    check(d.max_pixels > 0, f"data.max_pixels: {d.max_pixels} must be positive")
    check(d.shuffle_buffer >= 1, f"data.shuffle_buffer: {d.shuffle_buffer} must be >= 1")
    check(d.in_chans in (None, 1, 3), f"data.in_chans: {d.in_chans} must be 1 or 3")
    if d.name == "folder":
        check(d.root is not None, "data.root: the folder data set needs a directory (--set data.root=PATH)")
    one_of("data.decode", d.decode, list(DECODERS))
    if d.name == "webdataset":
        _validate_webdataset(cfg)
    check(
        d.decode == "pil" or d.name == "webdataset",
        f"data.decode=device decodes streamed shards "
        f"(data.name=webdataset); data.name={d.name} is decoded once (into memory or the folder cache), so leave "
        "data.decode=pil",
    )
    if d.crop_scale is not None:
        check(
            len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
            f"data.crop_scale: {d.crop_scale} must be [min, max] with 0 < min <= max <= 1",
        )
    check(
        len(d.crop_ratio) == 2 and 0 < d.crop_ratio[0] <= d.crop_ratio[1],
        f"data.crop_ratio: {d.crop_ratio} must be [min, max] with 0 < min <= max",
    )
    chans = d.in_chans or default_in_chans(d.name)
    for key in ("mean", "std"):
        value = getattr(d, key)
        check(value is None or len(value) in (1, 3), f"data.{key}: {value} must have 1 or 3 entries")
        check(
            value is None or len(value) == chans,
            f"data.{key}: {value} has {len(value or [])} entries but the images have {chans} channel(s)",
        )
    check(d.std is None or all(s > 0 for s in d.std), f"data.std: {d.std} must be positive (it divides the pixels)")
    check(d.num_workers >= 0, "data.num_workers must be >= 0")
    one_of("data.task", d.task, list(TASKS))
    check(
        len(d.task_scale) == 2 and 0 < d.task_scale[0] <= d.task_scale[1] <= 1,
        f"data.task_scale: {d.task_scale} must be [min, max] with 0 < min <= max <= 1",
    )
    check(0 < d.rotation_max <= 180, f"data.rotation_max: {d.rotation_max} must be in (0, 180]")
    check(0 <= d.distractors <= 8, f"data.distractors: {d.distractors} must be in [0, 8]")
    check(0 < d.track_shift <= 0.5, f"data.track_shift: {d.track_shift} must be in (0, 0.5] (of the canvas side)")
    if d.class_subset is not None:
        check(
            len(d.class_subset) >= 2 and len(set(d.class_subset)) == len(d.class_subset),
            f"data.class_subset: {d.class_subset} must name at least 2 different classes",
        )
        check(all(c >= 0 for c in d.class_subset), f"data.class_subset: {d.class_subset} holds a negative class")
        check(d.name != "webdataset", "data.class_subset: shards are streamed; filter the shards' classes instead")


def _validate_webdataset(cfg: Any) -> None:
    """Shards are streamed, never held in memory: options that need the whole training set are refused here."""
    d = cfg.data
    check(
        d.root is not None,
        "data.root: webdataset needs its shards: a directory of .tar files, a glob or a brace "
        "pattern such as /data/train-{000000..000099}.tar (--set data.root=PATH)",
    )
    check(d.shuffle_buffer >= 1, f"data.shuffle_buffer: {d.shuffle_buffer} must be >= 1")
    check(
        d.fraction == 1.0,
        f"data.fraction: {d.fraction} needs the whole training set in memory; with webdataset "
        "train on fewer shards instead (a brace pattern such as train-{000000..000009}.tar)",
    )
    check(
        d.val_fraction is None,
        "data.val_fraction: webdataset holds out data.val_root, or else the last training "
        "shard; leave data.val_fraction unset",
    )
    check(
        d.task == "classification",
        f"data.task={d.task}: the geometric tasks build their images in memory and "
        "do not stream from shards; use data.name=folder or fashion-mnist",
    )
    check(
        d.decode == "pil" or not cfg.method.randaug,
        f"data.decode=device with method.randaug={cfg.method.randaug}: "
        "RandAugment runs on host images before the batch crop; set data.decode=pil (decoding in the workers) or "
        "method.randaug=null",
    )


def default_in_chans(name: str) -> int:
    return 1 if name == "fashion-mnist" else 3


def resolve_data(cfg: Any, crop_scale: tuple[float, float]) -> None:
    """Derived defaults, in place on a resolved copy; `crop_scale` is the method's default crop scale."""
    d = cfg.data
    if d.in_chans is None:
        d.in_chans = default_in_chans(d.name)
    if d.task != "classification":  # crops and flips would move boxes and change angles: geometry stays fixed
        d.crop_scale, d.crop_ratio, d.hflip = [1.0, 1.0], [1.0, 1.0], False
    if d.crop_scale is None:  # MAE 0.2-1, SimMIM 0.67-1, supervised (DeiT) 0.08-1
        d.crop_scale = list(crop_scale)
    if d.mean is None or d.std is None:
        from mimkit.data.datasets import default_normalization

        mean, std = default_normalization(d.name, d.in_chans)
        d.mean = d.mean or mean
        d.std = d.std or std
    if d.decode_size is None:
        d.decode_size = max(d.img_size, round(d.img_size * 8 / 7))
