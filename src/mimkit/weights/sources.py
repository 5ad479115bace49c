"""Where weights come from: `init` (finetune, linprobe, knn, any training) and `distill.teacher`.

SOURCE is a mimkit run directory or checkpoint folder (any method), an exported encoder `.safetensors` (with its
`.json` sidecar), `timm:NAME` (timm's pretrained weights, when they are available locally; `timm:NAME@FILE` reads
them from a file), `scratch`, or `scratch:SOURCE` (random weights in SOURCE's architecture). Each resolves to the
encoder architecture (copied into the run's config) and its timm-layout weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mimkit.config import Config, ConfigError, resolved
from mimkit.engine.checkpoint import check_finite
from mimkit.methods.registry import method_spec
from mimkit.models.presets import resolve_model_spec
from mimkit.models.swin import stage_windows, swin_arch

ARCH_KEYS = (
    "name",
    "family",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "norm_eps",
    "stage_depths",
    "stage_heads",
    "window_size",
)


@dataclass
class Source:
    kind: str  # run | export | timm | scratch
    description: str
    state: dict[str, torch.Tensor] | None  # timm-layout encoder weights, classifier head removed
    arch: dict[str, Any]  # model.* keys to adopt
    data: dict[str, Any]  # data.img_size / data.in_chans the weights were trained at
    teacher: "Source | None" = None  # distillation runs: the teacher's source


def _without_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def _from_run(path: Path) -> Source:
    from mimkit.api import load

    method = load(path)
    cfg = method.config
    arch = {k: getattr(cfg.model, k) for k in ARCH_KEYS}
    arch.update({key: getattr(cfg.model, key) for key in method_spec(cfg).adopts})  # e.g. a classifier's pooling
    return Source(
        "run",
        f"{cfg.method.name} run {path}",
        _without_head(method.encoder_state_dict()),
        arch,
        {"img_size": cfg.data.img_size, "in_chans": cfg.data.in_chans},
    )


def _from_export(path: Path) -> Source:
    sidecar = path.with_suffix(path.suffix + ".json")
    if not sidecar.is_file():
        raise ConfigError(
            f"init: '{path}' has no '{sidecar.name}' beside it (written by `mimkit export`) to say "
            "which architecture it holds"
        )
    try:
        info = json.loads(sidecar.read_text())
        kw = info["timm_kwargs"]
        info["timm_name"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"init: '{sidecar}' is not the sidecar `mimkit export` writes ({type(err).__name__}: {err}); export the "
            "encoder again"
        ) from None
    arch = {
        "name": info["timm_name"],
        "patch_size": kw["patch_size"],
        "embed_dim": kw["embed_dim"],
        "mlp_ratio": kw["mlp_ratio"],
        "norm_eps": info.get("norm_eps", 1e-6),
    }
    if "depths" in kw:  # SwinV2: per-stage sizes
        arch.update(swin_arch(kw["depths"], kw["num_heads"], kw["window_size"]))
    else:
        arch.update(depth=kw["depth"], num_heads=kw["num_heads"])
    arch["family"] = "vit"  # the source says which ViT it is, whatever the run's config says
    if kw.get("use_shared_rel_pos_bias"):  # SimMIM's ViT, exported as timm's BEiT: its sizes on a ViT name
        arch.update(name="vit_base_patch16_224", family="beit")
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(f"init: '{path}' is not a readable safetensors file ({err}); export it again") from None
    check_finite(weights, f"init '{path}'")
    return Source(
        "export",
        f"exported encoder {path}",
        _without_head(weights),
        arch,
        {"img_size": kw["img_size"], "in_chans": kw["in_chans"]},
    )


def _check_weights_file(model: torch.nn.Module, file: str, name: str) -> None:
    """timm loads a pretrained file non-strictly when the classifier changes (num_classes=0), so a file with other
    key names would silently leave a random network: require every non-head weight to be in the file."""
    from timm.models import load_state_dict as timm_load_state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        keys = set(checkpoint_filter_fn(timm_load_state_dict(file), model))
    except Exception as err:  # noqa: BLE001 - unreadable or foreign files are user errors
        raise ConfigError(
            f"init: cannot read timm weights from '{file}' ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    missing = [k for k in model.state_dict() if not k.startswith(("head.", "fc_norm.")) and k not in keys]
    if missing:
        raise ConfigError(
            f"init: '{file}' does not hold weights for timm's {name}: missing "
            f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} ({len(missing)} keys)"
        )


def _from_timm(name: str, cfg: Config) -> Source:
    """timm's own pretrained weights, offline: from the local HF cache, or from a weights file on disk with
    `timm:NAME@FILE` (.safetensors, .pth or .bin, as timm's pretrained_cfg `file` reads them). NAME may carry a
    pretrained tag (vit_base_patch16_224.mae); the architecture is the name without it."""
    from timm.models import split_model_name_tag

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name, _, file = name.partition("@")
    arch_name = split_model_name_tag(name)[0]
    spec = resolve_model_spec(dataclasses.replace(Config().model, name=arch_name), cfg.data.img_size)
    overlay = None
    if file:
        if not Path(file).is_file():
            raise ConfigError(f"init: timm weights file '{file}' does not exist")
        overlay = dict(file=str(Path(file).resolve()))
    try:
        model = timm.create_model(
            name,
            pretrained=True,
            num_classes=0,
            img_size=cfg.data.img_size,
            in_chans=cfg.data.in_chans or 3,
            pretrained_cfg_overlay=overlay,
        )
    except Exception as err:  # noqa: BLE001 - any download/lookup failure means "not available locally"
        raise ConfigError(
            f"init: timm pretrained weights for '{name}' are not available locally "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Put them in the Hugging Face "
            "cache, or pass a weights file as timm:NAME@FILE"
        ) from None
    if file:
        _check_weights_file(model, overlay["file"], arch_name)
    arch = {
        "name": arch_name,
        "family": "vit",  # timm's ViT names; the run's model.family does not apply to them
        "patch_size": spec.patch_size,
        "embed_dim": spec.embed_dim,
        "depth": spec.depth,
        "num_heads": spec.num_heads,
        "mlp_ratio": spec.mlp_ratio,
        "norm_eps": 1e-6,
    }
    if spec.is_swin:
        arch.update(swin_arch(spec.stage_depths, spec.stage_heads, spec.window_size))
    return Source(
        "timm",
        f"timm pretrained {name}" + (f" from {file}" if file else ""),
        _without_head(model.state_dict()),
        arch,
        {"img_size": cfg.data.img_size, "in_chans": cfg.data.in_chans},
    )


def resolve_source(spec: str | None, cfg: Config) -> Source:
    """`scratch:SOURCE` is a random initialisation in SOURCE's architecture and input size (the random baseline
    of a comparison: the same network as the models it is compared with, without their training)."""
    if spec is None or spec == "scratch":
        return Source("scratch", "random initialisation", None, {}, {})
    if spec.startswith("scratch:"):
        shape = resolve_source(spec[len("scratch:") :], cfg)
        where = f"the architecture of {spec[len('scratch:') :]}"
        return Source("scratch", f"random initialisation in {where}", None, dict(shape.arch), dict(shape.data))
    if spec == "pixels":
        raise ConfigError(
            "init: 'pixels' (the raw-pixel baseline) has no encoder to train; it is an init for knn, linprobe and "
            "compare only"
        )
    if spec.startswith("timm:"):
        return _from_timm(spec[len("timm:") :], cfg)
    path = Path(spec)
    if path.is_file() and path.suffix == ".safetensors":
        return _from_export(path)
    if path.exists():
        return _from_run(path)
    raise ConfigError(
        f"init: '{spec}' is not a run directory, checkpoint folder, exported .safetensors file, timm:NAME or scratch"
    )


def adopt_source(cfg: Config, source: Source) -> Config:
    """The run's config with the source's encoder architecture and input size (so the weights fit). With
    data.resize_init the run keeps its own data.img_size (and a SwinV2 its model.window_size when set); the weights
    are then resampled as they load (weights.loading.resampled_to), and a SwinV2 records the windows it was
    pretrained with."""
    arch, data_keys = dict(source.arch), dict(source.data or {})
    if cfg.data.resize_init and "img_size" in data_keys:
        source_img = data_keys.pop("img_size")
        if arch.get("stage_depths"):  # SwinV2
            arch["pretrained_window_sizes"] = stage_windows(
                source_img, arch["patch_size"], arch["window_size"], len(arch["stage_depths"])
            )
            if cfg.model.window_size is not None:
                arch["window_size"] = cfg.model.window_size
    model = dataclasses.replace(cfg.model, **arch)
    data = dataclasses.replace(cfg.data, **data_keys) if data_keys else cfg.data
    if source.arch:  # sizes come from the source; let resolved() fill the rest
        data = dataclasses.replace(
            data,
            mean=cfg.data.mean if cfg.data.in_chans == data.in_chans else None,
            std=cfg.data.std if cfg.data.in_chans == data.in_chans else None,
        )
    return resolved(dataclasses.replace(cfg, model=model, data=data))


def scratch_in_shared_architecture(sources: list[str], cfg: Config, model_chosen: bool, what: str) -> list[str]:
    """`sources` with every plain `scratch` turned into `scratch:REF`, REF the first trained source, so a random
    baseline is the same network as the models it sits beside. The trained sources must agree on architecture and
    input size; with none, `scratch` keeps the config's model only when `model_chosen` (model.name was given),
    rather than guess. `what` names the command in errors."""
    if "scratch" not in sources:
        return list(sources)
    trained = [s for s in sources if s != "pixels" and not s.startswith("scratch")]
    if not trained:
        if model_chosen:
            return list(sources)
        raise ConfigError(
            f"{what}: 'scratch' alone does not say which architecture to build; set model.name (--set "
            "model.name=mim_vit_pico) or compare it with a trained model, whose architecture it then takes"
        )
    shapes = {}
    for spec in trained:
        source = resolve_source(spec, cfg)
        arch = {key: source.arch.get(key) for key in ARCH_KEYS}  # not e.g. a classifier's pooling
        shapes[spec] = json.dumps([arch, source.data], sort_keys=True, default=str)
    if len(set(shapes.values())) > 1:
        raise ConfigError(
            f"{what}: the models differ in architecture or input size ({', '.join(shapes)}), so 'scratch' would "
            "have to guess which one to build; name each random baseline as NAME=scratch:SOURCE"
        )
    return [f"scratch:{trained[0]}" if s == "scratch" else s for s in sources]
