"""What a method declares in its one registry entry (MethodSpec), and the `method:` keys every method shares.

A method's package (methods/mae/, methods/simmim/, ...) holds its model, its options (the `method.*` keys it adds,
with the published defaults) and a `SPEC` built from this module; mimkit.methods.registry collects the specs. The
config, the training entry, the evaluators and the benchmarks ask the spec, never the method's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from mimkit.data.mask_layout import default_mask_patch_size, mask_layout
from mimkit.errors import ConfigError, check, one_of

if TYPE_CHECKING:
    from mimkit.data.masks import MaskGenerator

MASK_TYPES = ("random", "simmim", "blockwise")


@dataclass
class MethodConfig:
    """The `method:` section's keys that every method has; each registered method adds its options' keys to it
    (see registry.method_config_class)."""

    name: str = "mae"  # a registered method: mae | simmim | supervised | mocov3 | task | distill (`mimkit methods`)
    mask_ratio: float | None = None  # None: the method's default (MAE 0.75, SimMIM 0.6)
    mask_type: str | None = None  # random | simmim | blockwise; None: the method's default (MAE random, SimMIM simmim)
    mask_patch_size: int | None = None  # SimMIM mask cell size in pixels; None: 32 at >=192 px, else a divisor
    # true: each training image keeps one mask for the whole run, the one its evaluation uses (a memorisable task,
    # for over-fitting studies: DS1 of docs/results/claims.md); false (the papers): a new mask every epoch
    fixed_masks: bool = False


@dataclass(frozen=True)
class Masking:
    """A masked-image-modeling method's mask defaults; a method with masking gets its mask counts checked."""

    ratio: float
    kind: str


# The mask defaults recorded for methods that do not mask (and for TinyMIM's masked-input option): SimMIM's.
DEFAULT_MASKING = Masking(0.6, "simmim")


@dataclass(frozen=True)
class MethodSpec:
    """One training objective, as the rest of mimkit sees it."""

    name: str
    summary: str  # one line for `mimkit methods`
    build: Callable[[Any], Any]  # resolved config -> a fresh Method (model.* builds its encoder)
    options: type | None = None  # dataclass of the `method.*` keys this method adds, with the published defaults
    check_options: Callable[[Any], None] | None = None  # the options' own ranges (method section); every config
    validate: Callable[[Any, Any], None] | None = None  # (cfg, resolved model preset): checks across sections
    resolve: Callable[[Any], None] | None = None  # derived defaults, on the resolved copy, in place
    evaluators: Callable[..., tuple[dict[str, Any], tuple[str, str, str]]] | None = None  # None: held-out loss
    masking: Masking | None = None  # MIM objectives: mask defaults (others record DEFAULT_MASKING)
    fixed_masks: bool = False  # honours method.fixed_masks (its training masks come from methods.mim.mask_keys)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop scale default (data.crop_scale)
    views: int = 1  # augmented views of each image per step (2: contrastive)
    needs_labels: bool = False  # the data must carry class labels
    needs_teacher: bool = False  # a frozen teacher is loaded and attached before training (distillation)
    swin: bool = False  # also trains a SwinV2 encoder (otherwise ViTs only)
    beit: bool = False  # also trains SimMIM's published ViT (model.family=beit)
    adopts: tuple[str, ...] = ()  # model.* keys a run of this method hands on to runs initialised from it
    # what the loss curves say: the training loss by name, and how its evaluations hold their inputs fixed
    loss_label: str = "training loss"
    eval_inputs: str = ""  # e.g. "fixed masks" (the same masks at every evaluation); "" when nothing is random

    def option_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.options)) if self.options is not None else []


def check_common(meth: Any) -> None:
    """The shared `method:` keys, whatever the method."""
    if meth.mask_ratio is not None:
        check(0.0 < meth.mask_ratio < 1.0, f"method.mask_ratio: {meth.mask_ratio} must be in (0, 1)")
    if meth.mask_type is not None:
        one_of("method.mask_type", meth.mask_type, list(MASK_TYPES))
    if meth.mask_patch_size is not None:
        check(meth.mask_patch_size > 0, f"method.mask_patch_size: {meth.mask_patch_size} must be positive or null")


def mask_defaults(spec: MethodSpec) -> Masking:
    return spec.masking or DEFAULT_MASKING


def check_mask_counts(cfg: Any, patch_size: int, ratio: float, kind: str, key: str) -> None:
    """The mask must hide at least one token and leave at least one visible, for the resolved mask settings."""
    img = cfg.data.img_size
    cell = cfg.method.mask_patch_size or default_mask_patch_size(img, patch_size)
    try:
        mask_layout(kind, img, patch_size, ratio, cell)
    except ValueError as err:
        raise ConfigError(f"{key}: {err} (lower or raise {key}, or use a finer method.mask_patch_size)") from None


def mask_generator(cfg: Any, ratio: float | None = None) -> MaskGenerator:
    """The resolved config's mask generator (method.mask_*; `ratio` replaces method.mask_ratio)."""
    from mimkit.data.masks import MaskGenerator  # torch: imported when a method is built, not when a config loads

    meth = cfg.method
    return MaskGenerator(
        meth.mask_type,
        cfg.data.img_size,
        cfg.model.patch_size,
        meth.mask_ratio if ratio is None else ratio,
        meth.mask_patch_size,
    )
