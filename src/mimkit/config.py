"""Typed configs: YAML recipes + dotted `--set key=value` overrides, validated before any work starts.

Every key a run can take is a dataclass field below, so an unknown key or an impossible value is caught here with a
message naming the key and the valid choices, instead of surfacing as a traceback an hour into training.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mimkit.errors import ConfigError  # noqa: F401 (re-exported: `from mimkit.config import ConfigError`)

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # fashion-mnist | folder | synthetic | webdataset
    root: str | None = None  # data directory; fashion-mnist also looks in $MIMKIT_DATA and Debian's package;
    # webdataset: a directory of .tar shards, a glob, or a brace pattern such as /x/train-{000000..000099}.tar
    val_root: str | None = None  # folder data: a separate held-out tree; webdataset: held-out shards
    fraction: float = 1.0  # nested, class-balanced subset of the training set (0.1 inside 0.2 inside ... 1.0)
    val_fraction: float | None = None  # held-out = seeded fraction of train; None: the test split / val_root, else 0.05
    img_size: int = 32  # network input size (Fashion-MNIST's 28 px are resized)
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
    synthetic_size: int = 512  # synthetic data: number of train images (benchmarks and tests)
    task: str = "classification"  # classification | localization | rotation | combined (class + box)
    task_scale: list[float] = field(default_factory=lambda: [0.3, 0.8])  # localization: item side / canvas side
    rotation_max: float = 90.0  # rotation: angles uniform in [-max, max] degrees


@dataclass
class ModelConfig:
    name: str = "mim_vit_tiny"  # a mimkit preset (see `mimkit models`) or any timm vit_* name
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    drop_path: float = 0.0
    norm_eps: float = 1e-6
    num_classes: int | None = None  # classification (supervised / finetune); None: from the data set
    global_pool: str = "avg"  # classification head input: avg (global average pooling + fc_norm, MAE) | token
    freeze: bool = False  # task heads: train a linear head on the frozen encoder (eval mode, no gradients)
    decoder_dim: int | None = None  # MAE decoder; None: preset default (512 for ImageNet-size models)
    decoder_depth: int | None = None
    decoder_heads: int | None = None
    # SwinV2 (model.name swinv2_* or mim_swinv2_*): per-stage depths and heads, window size; None: preset/timm
    stage_depths: list[int] | None = None
    stage_heads: list[int] | None = None
    window_size: int | None = None


@dataclass
class MethodConfig:
    name: str = "mae"  # mae | simmim
    mask_ratio: float | None = None  # None: 0.75 (MAE) / 0.6 (SimMIM)
    mask_type: str | None = None  # random | simmim | blockwise; None: random (MAE) / simmim (SimMIM)
    mask_patch_size: int | None = None  # SimMIM mask cell size in pixels; None: 32 at >=192 px, else a divisor
    norm_pix: bool = True  # MAE: per-patch normalised pixel targets
    # supervised (DeiT-style training from scratch, and fine-tuning of a pretrained encoder)
    label_smoothing: float = 0.1
    mixup: float = 0.0  # timm Mixup alpha (0: off)
    cutmix: float = 0.0  # timm CutMix alpha (0: off)
    randaug: str | None = None  # timm RandAugment spec, e.g. rand-m9-mstd0.5-inc1 (None: off)
    layer_decay: float = 1.0  # layer-wise lr decay, scale = decay^(L+1-i) (1: off)
    # MoCo v3 (contrastive baseline)
    moco_temperature: float = 0.2
    moco_momentum: float = 0.99  # start of the momentum schedule; rises to 1 by a half cosine
    moco_dim: int = 256  # projector output
    moco_mlp_dim: int = 4096  # projector / predictor hidden width


@dataclass
class ProbeConfig:
    """Frozen-encoder evaluation: linear probe (MAE protocol) and kNN (DINO protocol)."""

    pool: str = "token"  # token (class token) | avg (mean of patch tokens)
    epochs: int = 100
    optimizer: str = "lars"  # lars | sgd
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256
    weight_decay: float = 0.0
    batch_size: int = 1024
    warmup_epochs: int = 10
    knn_k: int = 20
    knn_temperature: float = 0.07
    feature_batch_size: int = 512


@dataclass
class DistillConfig:
    """TinyMIM distillation (method.name=distill): model.* is the student, `teacher` the frozen encoder."""

    teacher: str | None = None  # run dir / checkpoint (any method), exported .safetensors, timm:NAME[@FILE]
    targets: str = "qk+vv"  # '+'-joined cls, feature, qk, vv, each optionally NAME:WEIGHT (qk:1+vv:0.5)
    teacher_layer: int | None = None  # 1-based block (18 of 24 for ViT-L), negative from the end; None: last
    student_layer: int | None = None  # None: last
    head_match: str = "reshape_student"  # reshape_student (TinyMIM) | resplit_teacher
    cls_loss: str = "smooth_l1"  # smooth_l1 | mse | cosine
    feature_loss: str = "smooth_l1"  # smooth_l1 | mse | cosine
    mask_ratio: float = 0.0  # > 0: the student sees masked input (mask tokens; method.mask_type cells)
    mim_weight: float = 0.0  # > 0: auxiliary SimMIM pixel loss on the student's masked patches
    color_jitter: float = 0.4  # brightness/contrast/saturation strength, on the student's view only
    chain: list[str] | None = None  # sequential distillation: student model names in order (mimkit distill --chain)
    # Filled in from the teacher when the run starts (recorded so the run reloads without the teacher):
    teacher_embed_dim: int | None = None
    teacher_num_heads: int | None = None
    teacher_depth: int | None = None
    relation_heads: int | None = None  # the head count both relations are computed with
    teacher_relation_heads: int | None = None  # how the teacher's block is split (a distilled teacher's own count)


@dataclass
class TrainConfig:
    steps: int = 1000
    epochs: float | None = None  # when set, steps = ceil(epochs * train images / batch) and evaluation is per epoch
    warmup_epochs: float | None = None  # when set (with epochs), replaces warmup_steps
    batch_size: int = 256  # global batch: all processes x accumulation steps
    accum_steps: int = 1
    lr: float | None = None  # None: base_lr * batch_size / 256
    base_lr: float = 1.5e-4
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float | None = None
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    # torch.compile the training forward: false | true | auto (CUDA only) | an inductor mode (reduce-overhead = CUDA
    # graphs, max-autotune, max-autotune-no-cudagraphs)
    compile: bool | str = False
    grad_checkpointing: bool = False  # recompute block activations in backward: less memory, ~1/3 more compute
    # the training step's speed-ups (docs/performance.md, "The fast path"): the last block only where the loss reads
    # it, MAE's visible-patch embedding, the fused pixel losses. Same loss and gradients; false runs every method's
    # plain code (forward_mim / forward_loss), e.g. to check a change against it
    fast_path: bool = True
    eval_every: int = 100
    eval_samples: int = 512  # size of the fixed held-out and fixed train subsets
    eval_batch_size: int = 256
    ckpt_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    max_nonfinite: int = 10  # consecutive non-finite steps before the run stops
    reconstruct: bool = True  # write the reconstruction figure at the end
    tensorboard: bool = True  # when tensorboard is installed


DECODERS = ("pil", "device")  # data.decode: where streamed shard images are decoded
COMPILE_MODES = ("reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    init: str | None = None  # weights to start from: run dir / checkpoint, exported .safetensors, timm:NAME, scratch
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Turn a YAML value into the field's declared type, or fail naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint} Valid keys here: {', '.join(sorted(valid))}")


def _build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise _unknown_key(full, names)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=1e-3` -> ("train.lr", 0.001); values are parsed as YAML so lists and null work."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise ConfigError(f"--set {key.strip()}: '{raw}' is not a valid YAML value ({problem}); quote strings "
                          "and close lists, e.g. train.betas=[0.9,0.95]") from None
    return key.strip(), value


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(recipe_or_path: str) -> Path:
    path = Path(recipe_or_path)
    if path.is_file():
        return path
    if path.is_dir() and (path / "config.yaml").is_file():
        return path / "config.yaml"
    candidate = RECIPES_DIR / f"{recipe_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(
        f"config '{recipe_or_path}' is neither a YAML file, a run directory nor a recipe. "
        f"Recipes: {', '.join(recipe_names())} (see `mimkit recipes`)"
    )


def load_config(recipe_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a recipe name, YAML path or run directory, apply `key=value` overrides, validate."""
    tree: dict[str, Any] = {}
    if recipe_or_path:
        path = resolve_recipe(recipe_or_path)
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> Config:
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    from mimkit.engine.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------------------------------- validation
def _choice(key: str, value: Any, choices: list[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(map(str, choices))}")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Impossible values fail here, before data or models are built."""
    _choice("device", cfg.device, ["auto", "cpu", "cuda"])
    d, m, meth, t = cfg.data, cfg.model, cfg.method, cfg.train
    _choice("data.name", d.name, ["fashion-mnist", "folder", "synthetic", "webdataset"])
    _check(0.0 < d.fraction <= 1.0, f"data.fraction: {d.fraction} must be in (0, 1]")
    _check(d.val_fraction is None or 0.0 < d.val_fraction < 1.0,
           f"data.val_fraction: {d.val_fraction} must be in (0, 1) or null")
    _check(d.img_size > 0, f"data.img_size: {d.img_size} must be positive")
    _check(d.in_chans in (None, 1, 3), f"data.in_chans: {d.in_chans} must be 1 or 3")
    if d.name == "folder":
        _check(d.root is not None, "data.root: the folder data set needs a directory (--set data.root=PATH)")
    _choice("data.decode", d.decode, list(DECODERS))
    if d.name == "webdataset":
        _validate_webdataset(cfg)
    _check(d.decode == "pil" or d.name == "webdataset", f"data.decode=device decodes streamed shards "
           f"(data.name=webdataset); data.name={d.name} is decoded once (into memory or the folder cache), so leave "
           "data.decode=pil")
    if d.crop_scale is not None:
        _check(len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
               f"data.crop_scale: {d.crop_scale} must be [min, max] with 0 < min <= max <= 1")
    _check(len(d.crop_ratio) == 2 and 0 < d.crop_ratio[0] <= d.crop_ratio[1],
           f"data.crop_ratio: {d.crop_ratio} must be [min, max] with 0 < min <= max")
    for key in ("mean", "std"):
        value = getattr(d, key)
        _check(value is None or len(value) in (1, 3), f"data.{key}: {value} must have 1 or 3 entries")
    _check(d.num_workers >= 0, "data.num_workers must be >= 0")

    _choice("method.name", meth.name, ["mae", "simmim", "supervised", "mocov3", "task", "distill"])
    validate_distill(cfg)
    _choice("data.task", d.task, ["classification", "localization", "rotation", "combined"])
    _check(meth.name != "task" or d.task != "classification",
           "method.name=task trains the geometric heads: set data.task to localization, rotation or combined "
           "(classification is method.name=supervised)")
    _check(len(d.task_scale) == 2 and 0 < d.task_scale[0] <= d.task_scale[1] <= 1,
           f"data.task_scale: {d.task_scale} must be [min, max] with 0 < min <= max <= 1")
    _check(0 < d.rotation_max <= 180, f"data.rotation_max: {d.rotation_max} must be in (0, 180]")
    _check(meth.moco_temperature > 0, f"method.moco_temperature: {meth.moco_temperature} must be positive")
    _check(0 <= meth.moco_momentum <= 1, f"method.moco_momentum: {meth.moco_momentum} must be in [0, 1]")
    _check(meth.moco_dim > 0 and meth.moco_mlp_dim > 0, "method.moco_dim and method.moco_mlp_dim must be positive")
    _choice("model.global_pool", m.global_pool, ["avg", "token"])
    _check(m.num_classes is None or m.num_classes > 1, f"model.num_classes: {m.num_classes} must be >= 2")
    _check(0.0 <= meth.label_smoothing < 1.0, f"method.label_smoothing: {meth.label_smoothing} must be in [0, 1)")
    _check(meth.mixup >= 0 and meth.cutmix >= 0, "method.mixup and method.cutmix must be >= 0")
    _check(0.0 < meth.layer_decay <= 1.0, f"method.layer_decay: {meth.layer_decay} must be in (0, 1]")
    if meth.randaug is not None:
        _check(meth.randaug.startswith("rand-"), f"method.randaug: '{meth.randaug}' is not a timm RandAugment "
               "spec (e.g. rand-m9-mstd0.5-inc1)")
    p = cfg.probe
    _choice("probe.pool", p.pool, ["token", "avg"])
    _choice("probe.optimizer", p.optimizer, ["lars", "sgd"])
    for key in ("epochs", "base_lr", "batch_size", "knn_k", "knn_temperature", "feature_batch_size"):
        _check(getattr(p, key) > 0, f"probe.{key}: {getattr(p, key)} must be positive")
    _check(0 <= p.warmup_epochs <= p.epochs, f"probe.warmup_epochs: {p.warmup_epochs} must be in [0, probe.epochs]")
    if meth.mask_ratio is not None:
        _check(0.0 < meth.mask_ratio < 1.0, f"method.mask_ratio: {meth.mask_ratio} must be in (0, 1)")
    if meth.mask_type is not None:
        _choice("method.mask_type", meth.mask_type, ["random", "simmim", "blockwise"])

    from mimkit.models.presets import resolve_model_spec  # late import: keeps `mimkit --help` fast

    spec = resolve_model_spec(m, d.img_size)  # raises ConfigError for unknown names
    _check(not spec.is_swin or meth.name in ("simmim", "supervised"),
           f"method.name={meth.name} needs a ViT; a SwinV2 ('{m.name}') trains with simmim or supervised")
    _check(d.img_size % spec.patch_size == 0,
           f"data.img_size: {d.img_size} is not divisible by the patch size {spec.patch_size} "
           f"(set data.img_size to a multiple of {spec.patch_size}, or model.patch_size)")
    _check(spec.embed_dim % spec.num_heads == 0,
           f"model.num_heads: {spec.num_heads} does not divide model.embed_dim {spec.embed_dim}")
    _check(0.0 <= m.drop_path < 1.0, f"model.drop_path: {m.drop_path} must be in [0, 1)")
    _check(m.norm_eps > 0, f"model.norm_eps: {m.norm_eps} must be positive")
    if meth.mask_patch_size is not None:
        _check(meth.mask_patch_size % spec.patch_size == 0 and d.img_size % meth.mask_patch_size == 0,
               f"method.mask_patch_size: {meth.mask_patch_size} must be a multiple of the patch size "
               f"{spec.patch_size} and divide data.img_size {d.img_size}")
    if meth.name in ("mae", "simmim", "distill"):
        _check_mask_counts(cfg, spec.patch_size)
    chans = d.in_chans or (1 if d.name == "fashion-mnist" else 3)
    for key in ("mean", "std"):
        value = getattr(d, key)
        _check(value is None or len(value) == chans,
               f"data.{key}: {value} has {len(value or [])} entries but the images have {chans} channel(s)")

    _check(t.steps > 0, f"train.steps: {t.steps} must be positive")
    _check(t.batch_size > 0, f"train.batch_size: {t.batch_size} must be positive")
    _check(t.accum_steps > 0, f"train.accum_steps: {t.accum_steps} must be positive")
    _check(t.batch_size % t.accum_steps == 0,
           f"train.batch_size: {t.batch_size} is not divisible by train.accum_steps {t.accum_steps}")
    _check(t.lr is None or t.lr > 0, f"train.lr: {t.lr} must be positive")
    _check(t.base_lr > 0, f"train.base_lr: {t.base_lr} must be positive")
    _check(t.min_lr >= 0, f"train.min_lr: {t.min_lr} must be >= 0")
    _check(0 <= t.warmup_steps <= t.steps, f"train.warmup_steps: {t.warmup_steps} must be in [0, train.steps]")
    _check(t.epochs is None or t.epochs > 0, f"train.epochs: {t.epochs} must be positive or null")
    _check(t.warmup_epochs is None or t.epochs is None or 0 <= t.warmup_epochs <= t.epochs,
           f"train.warmup_epochs: {t.warmup_epochs} must be in [0, train.epochs] (it applies only with train.epochs)")
    _check(t.weight_decay >= 0, f"train.weight_decay: {t.weight_decay} must be >= 0")
    _check(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas),
           f"train.betas: {t.betas} must be two values in [0, 1)")
    _check(t.clip_grad is None or t.clip_grad > 0, f"train.clip_grad: {t.clip_grad} must be positive or null")
    _choice("train.precision", t.precision, ["auto", "fp32", "bf16", "fp16"])
    _check(t.compile in (True, False, "auto", *COMPILE_MODES),
           f"train.compile: {t.compile!r} must be true, false, auto or one of {', '.join(COMPILE_MODES)}")
    for key in ("eval_every", "eval_samples", "eval_batch_size", "ckpt_every", "log_every", "max_nonfinite"):
        _check(getattr(t, key) > 0, f"train.{key}: {getattr(t, key)} must be positive")
    _check(t.keep_last >= 1, f"train.keep_last: {t.keep_last} must be >= 1")


def _validate_webdataset(cfg: Config) -> None:
    """Shards are streamed, never held in memory: options that need the whole training set are refused here."""
    d = cfg.data
    _check(d.root is not None, "data.root: webdataset needs its shards: a directory of .tar files, a glob or a brace "
           "pattern such as /data/train-{000000..000099}.tar (--set data.root=PATH)")
    _check(d.shuffle_buffer >= 1, f"data.shuffle_buffer: {d.shuffle_buffer} must be >= 1")
    _check(d.fraction == 1.0, f"data.fraction: {d.fraction} needs the whole training set in memory; with webdataset "
           "train on fewer shards instead (a brace pattern such as train-{000000..000009}.tar)")
    _check(d.val_fraction is None, "data.val_fraction: webdataset holds out data.val_root, or else the last training "
           "shard; leave data.val_fraction unset")
    _check(d.task == "classification", f"data.task={d.task}: the geometric tasks build their images in memory and "
           "do not stream from shards; use data.name=folder or fashion-mnist")
    _check(d.decode == "pil" or not cfg.method.randaug, f"data.decode=device with method.randaug={cfg.method.randaug}: "
           "RandAugment runs on host images before the batch crop; set data.decode=pil (decoding in the workers) or "
           "method.randaug=null")


def validate_distill(cfg: Config) -> None:
    dis = cfg.distill
    if cfg.method.name != "distill":
        return
    from mimkit.distill.targets import parse_targets

    parse_targets(dis.targets)
    _choice("distill.head_match", dis.head_match, ["reshape_student", "resplit_teacher"])
    _choice("distill.cls_loss", dis.cls_loss, ["smooth_l1", "mse", "cosine"])
    _choice("distill.feature_loss", dis.feature_loss, ["smooth_l1", "mse", "cosine"])
    _check(0.0 <= dis.mask_ratio < 1.0, f"distill.mask_ratio: {dis.mask_ratio} must be in [0, 1)")
    _check(dis.mim_weight >= 0, f"distill.mim_weight: {dis.mim_weight} must be >= 0")
    _check(dis.mim_weight == 0 or dis.mask_ratio > 0,
           "distill.mim_weight > 0 needs masked student input: set distill.mask_ratio (e.g. 0.6)")
    _check(dis.color_jitter >= 0, f"distill.color_jitter: {dis.color_jitter} must be >= 0")
    for key in ("teacher_layer", "student_layer"):
        _check(getattr(dis, key) != 0, f"distill.{key}: layers count from 1 (or -1 from the end); 0 is not a layer")


def _check_mask_counts(cfg: Config, patch_size: int) -> None:
    """The mask must hide at least one token and leave at least one visible, for the resolved mask settings."""
    from mimkit.data.masks import MaskGenerator

    meth, img = cfg.method, cfg.data.img_size
    is_mae = meth.name == "mae"
    ratio = meth.mask_ratio if meth.mask_ratio is not None else (0.75 if is_mae else 0.6)
    kind = meth.mask_type or ("random" if is_mae else "simmim")
    cell = meth.mask_patch_size or default_mask_patch_size(img, patch_size)
    key = "method.mask_ratio"
    if meth.name == "distill":  # only a masked-input distillation masks anything
        if not cfg.distill.mask_ratio:
            return
        ratio, kind, key = cfg.distill.mask_ratio, meth.mask_type or "simmim", "distill.mask_ratio"
    try:
        MaskGenerator(kind, img, patch_size, ratio, cell)
    except ValueError as err:
        raise ConfigError(f"{key}: {err} (lower or raise {key}, or use a finer method.mask_patch_size)") from None


def resolved(cfg: Config) -> Config:
    """Fill every derived default in (mask ratio, crop scale, lr, ...) so the saved config says what ran."""
    from mimkit.models.presets import resolve_model_spec

    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data),
        model=dataclasses.replace(cfg.model),
        method=dataclasses.replace(cfg.method),
        train=dataclasses.replace(cfg.train),
        probe=dataclasses.replace(cfg.probe),
        distill=dataclasses.replace(cfg.distill),
    )
    d, m, meth, t = cfg.data, cfg.model, cfg.method, cfg.train
    is_mae = meth.name == "mae"
    if d.in_chans is None:
        d.in_chans = 1 if d.name == "fashion-mnist" else 3
    if d.task != "classification":  # crops and flips would move boxes and change angles: geometry stays fixed
        d.crop_scale, d.crop_ratio, d.hflip = [1.0, 1.0], [1.0, 1.0], False
    if d.crop_scale is None:  # MAE 0.2-1, SimMIM 0.67-1, supervised (DeiT) 0.08-1
        d.crop_scale = {"mae": [0.2, 1.0], "simmim": [0.67, 1.0]}.get(meth.name, [0.08, 1.0])
    if m.num_classes is None and d.name in ("fashion-mnist", "synthetic"):
        m.num_classes = 10
    if d.mean is None or d.std is None:
        from mimkit.data.datasets import default_normalization

        mean, std = default_normalization(d.name, d.in_chans)
        d.mean = d.mean or mean
        d.std = d.std or std
    if d.decode_size is None:
        d.decode_size = max(d.img_size, round(d.img_size * 8 / 7))
    spec = resolve_model_spec(m, d.img_size)
    for key in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "decoder_dim", "decoder_depth",
                "decoder_heads", "window_size"):
        if getattr(m, key) is None:
            setattr(m, key, getattr(spec, key))
    if spec.is_swin:
        m.stage_depths, m.stage_heads = list(spec.stage_depths), list(spec.stage_heads)
    if meth.mask_ratio is None:
        meth.mask_ratio = 0.75 if is_mae else 0.6
    if meth.mask_type is None:
        meth.mask_type = "random" if is_mae else "simmim"
    if meth.mask_patch_size is None:
        meth.mask_patch_size = default_mask_patch_size(d.img_size, m.patch_size)
    if t.lr is None:
        t.lr = t.base_lr * t.batch_size / 256
    return cfg


def resolve_epochs(cfg: Config, train_images: int) -> Config:
    """With `train.epochs` set: steps, warmup and per-epoch evaluation from the training-set size."""
    t = cfg.train
    if t.epochs is None:
        return cfg
    per_epoch = max(1, train_images // t.batch_size)
    steps = max(1, math.ceil(t.epochs * per_epoch))
    warmup = round(t.warmup_epochs * per_epoch) if t.warmup_epochs is not None else min(t.warmup_steps, steps)
    train = dataclasses.replace(t, steps=steps, warmup_steps=min(warmup, steps), eval_every=per_epoch,
                                ckpt_every=per_epoch)
    return dataclasses.replace(cfg, train=train)


def default_mask_patch_size(img_size: int, patch_size: int) -> int:
    """SimMIM masks 32-px cells at ImageNet sizes; small images get the largest multiple of the patch size that
    divides the image and leaves at least a 4x4 grid of cells."""
    if img_size % 32 == 0 and 32 % patch_size == 0 and img_size // 32 >= 4:
        return 32
    best = patch_size
    for size in range(patch_size, img_size + 1, patch_size):
        if img_size % size == 0 and img_size // size >= 4:
            best = size
    return best
