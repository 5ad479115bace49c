"""A sweep file (YAML) -> the list of runs it asks for: models x data fractions x training lengths x seeds, plus any
other config key, each run a base config with overrides and its own directory under the sweep's output.

Every run is validated here (unknown key, impossible value) so a typo fails before the first run starts, not after
the twentieth has finished.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from mimkit.config import RECIPES_DIR, ConfigError, load_config
from mimkit.config.coerce import parse_override

# Short axis names for the four axes of the data-scaling paper; any dotted config key works as an axis too.
AXIS_ALIASES = {
    "model": "model.name",
    "data": "data.fraction",
    "steps": "train.steps",
    "iterations": "train.steps",
    "epochs": "train.epochs",
    "seed": "seed",
}
# Column names in results.csv for the aliased axes (what `mimkit scaling analyze` reads).
AXIS_COLUMNS = {
    "model.name": "model",
    "data.fraction": "data",
    "train.steps": "iterations",
    "train.epochs": "epochs",
    "seed": "seed",
}
SWEEPS_DIR = RECIPES_DIR / "sweeps"
SWEEP_KEYS = {"base", "set", "grid", "finetune", "parallel", "slurm"}


@dataclass(frozen=True)
class AxisValue:
    """One point on an axis: its label (directory names, results.csv) and the overrides it stands for."""

    label: str
    overrides: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class TrainStep:
    """One training of a sweep run, as data: the runner runs it in process through mimkit's training API; `argv`
    is the same training as the `mimkit` command line a user could type (logs, --dry-run)."""

    command: str  # pretrain | finetune (supervised training from `init`)
    config: str  # recipe, YAML file or run directory
    out: Path
    overrides: tuple[str, ...]
    init: str | None = None  # finetune: the pretrained run

    def argv(self) -> list[str]:
        start = ["--init", self.init] if self.init is not None else []
        return [self.command, *start, "--config", self.config, "--out", str(self.out), *_set_flags(self.overrides)]

    def config_overrides(self) -> list[str]:
        """The overrides `mimkit COMMAND` applies: a fine-tune is supervised training started from `init`."""
        if self.command == "finetune":
            return [f"init={self.init}", "method.name=supervised", *self.overrides]
        return list(self.overrides)


@dataclass
class SweepRun:
    """One grid point: `pretrain --config base --set ...` in `run_dir`, then optionally a fine-tune."""

    run_id: str
    axes: dict[str, str]  # column -> label, e.g. {"model": "mim_vit_pico", "data": "0.1", "iterations": "250"}
    overrides: list[str]  # key=value, the sweep's common `set` first, then this point's axes
    run_dir: Path
    finetune_dir: Path | None = None

    def pretrain_step(self, base: str) -> TrainStep:
        return TrainStep("pretrain", base, self.run_dir, tuple(self.overrides))


@dataclass
class FinetuneSpec:
    config: str = "finetune_fmnist_tiny"
    overrides: list[str] = field(default_factory=list)

    def step(self, run: SweepRun) -> TrainStep:
        return TrainStep("finetune", self.config, run.finetune_dir, tuple(self.overrides), init=str(run.run_dir))


@dataclass
class Sweep:
    base: str
    runs: list[SweepRun]
    finetune: FinetuneSpec | None
    parallel: int
    slurm: dict[str, Any]
    out: Path

    def steps(self, run: SweepRun) -> list[TrainStep]:
        """This run's trainings, in order (pretraining, then the fine-tune if asked)."""
        steps = [run.pretrain_step(self.base)]
        if self.finetune is not None:
            steps.append(self.finetune.step(run))
        return steps

    def commands(self, run: SweepRun) -> list[list[str]]:
        """The same trainings as `mimkit` argument lists."""
        return [step.argv() for step in self.steps(run)]


def _set_flags(overrides: list[str]) -> list[str]:
    return [flag for item in overrides for flag in ("--set", item)]


def yaml_value(value: Any) -> str:
    """A value as `--set` parses it back (YAML flow style): 0.01, mim_vit_pico, [0.9, 0.95], null."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[:-3].strip() if text.endswith("...") else text


def _as_overrides(raw: Any, where: str) -> list[tuple[str, Any]]:
    """`set:` as a mapping {key: value} or a list of 'key=value' strings."""
    from mimkit.config import parse_override

    if raw is None:
        return []
    if isinstance(raw, dict):
        return [(str(k), v) for k, v in raw.items()]
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return [parse_override(item) for item in raw]
    raise ConfigError(
        f"{where}: expected a mapping of config keys to values or a list of 'key=value' strings, got {raw!r}"
    )


def _label(value: Any) -> str:
    return value if isinstance(value, str) else yaml_value(value)


def _axis(name: str, raw: Any) -> tuple[str, list[AxisValue]]:
    """An axis is a list of values for one key, or a mapping label -> {key: value, ...} (a named bundle, e.g. a
    model size that changes several keys at once)."""
    key = AXIS_ALIASES.get(name, name)
    column = AXIS_COLUMNS.get(key, name)
    if isinstance(raw, dict):
        values = [
            AxisValue(str(label), tuple(_as_overrides(bundle, f"grid.{name}.{label}"))) for label, bundle in raw.items()
        ]
    elif isinstance(raw, list):
        values = [AxisValue(_label(v), ((key, v),)) for v in raw]
    else:
        values = [AxisValue(_label(raw), ((key, raw),))]
    if not values:
        raise ConfigError(f"grid.{name}: the axis has no values")
    labels = [v.label for v in values]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"grid.{name}: repeated value in {labels}")
    return column, values


def _dir_name(axes: dict[str, str]) -> str:
    parts = []
    for column, label in axes.items():
        parts.append(label if column == "model" else f"{column.rsplit('.', 1)[-1]}{label}")
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "-".join(parts))


def sweep_names() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def resolve_sweep_file(name_or_path: str | Path) -> Path:
    """A sweep YAML path, or the name of a shipped sweep (recipes/sweeps/NAME.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path).removeprefix("sweeps/").removesuffix(".yaml")  # the README's recipes/sweeps/ names
    shipped = SWEEPS_DIR / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"sweep '{name_or_path}' is neither a YAML file nor a shipped sweep ({', '.join(sweep_names()) or 'none'})"
    )


def load_sweep(path: str | Path, out: str | Path, extra_sets: list[str] | None = None) -> Sweep:
    """Read and expand a sweep file; every run's config is loaded and validated. `extra_sets` (`sweep --set`) are
    added to the file's `set` for every run; a key that a grid axis sets is refused (pick axis values with --only)."""
    path = resolve_sweep_file(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(sorted(SWEEP_KEYS))}")
    unknown = set(tree) - SWEEP_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown sweep key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(SWEEP_KEYS))}"
        )
    if "base" not in tree:
        raise ConfigError(f"{path}: 'base' (the recipe, YAML or run directory every run starts from) is required")
    grid = tree.get("grid") or {}
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: 'grid' must map axes (model, data, steps, seed or config keys) to values")
    parallel = tree.get("parallel", 1)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise ConfigError(f"{path}: parallel: {parallel!r} must be a positive integer")
    base = str(tree["base"])
    base_path = path.parent / base
    if not Path(base).exists() and base_path.exists():  # a base YAML next to the sweep file
        base = str(base_path)
    slurm = tree.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError(
            f"{path}: slurm: expected a mapping of submitit parameters (partition: gpu, "
            f"gpus_per_node: 1, timeout_min: 240, ...), got {slurm!r}"
        )
    common = [f"{k}={yaml_value(v)}" for k, v in _as_overrides(tree.get("set"), "set")]
    return expand(base, common, grid, tree.get("finetune"), parallel, slurm, Path(out), extra_sets or ())


def expand(
    base: str,
    common: list[str],
    grid: dict[str, Any],
    finetune: Any,
    parallel: int,
    slurm: dict[str, Any],
    out: Path,
    extra_sets: Sequence[str] = (),
) -> Sweep:
    """The sweep's runs: `common` overrides, then `extra_sets` (`sweep --set`, never a key an axis sets), then
    each grid point's."""
    axes = [_axis(str(name), raw) for name, raw in grid.items()]
    columns = [column for column, _ in axes]
    if len(set(columns)) != len(columns):
        raise ConfigError(f"grid: the same axis is given twice ({columns})")
    on_axes = {key: name for name, (_, values) in zip(grid, axes) for value in values for key, _ in value.overrides}
    for text in extra_sets:
        key, _ = parse_override(text)
        if key in on_axes:
            raise ConfigError(
                f"--set {text}: {key} is set by the grid's '{on_axes[key]}' axis; choose among its runs with --only, "
                "or edit the sweep file"
            )
    common = [*common, *extra_sets]
    ft = _finetune_spec(finetune)
    runs, seen = [], set()
    for point in itertools.product(*(values for _, values in axes)):
        labels = {column: value.label for column, value in zip(columns, point)}
        overrides = common + [f"{k}={yaml_value(v)}" for value in point for k, v in value.overrides]
        run_id = _dir_name(labels)
        if run_id in seen:
            raise ConfigError(f"grid: two runs map to the directory '{run_id}'; give the axis values distinct labels")
        seen.add(run_id)
        try:
            load_config(base, overrides)
        except ConfigError as err:
            raise ConfigError(f"run {run_id}: {err}") from None
        run_dir = out / "runs" / run_id
        runs.append(SweepRun(run_id, labels, overrides, run_dir, run_dir / "finetune" if ft else None))
    if ft is not None:
        try:
            load_config(ft.config, ft.overrides)
        except ConfigError as err:
            raise ConfigError(f"finetune: {err}") from None
    return Sweep(base, runs, ft, parallel, dict(slurm), out)


def _finetune_spec(raw: Any) -> FinetuneSpec | None:
    if raw in (None, False):
        return None
    if raw is True:
        return FinetuneSpec()
    if not isinstance(raw, dict) or set(raw) - {"config", "set"}:
        raise ConfigError(f"finetune: expected true or a mapping with 'config' and 'set', got {raw!r}")
    overrides = [f"{k}={yaml_value(v)}" for k, v in _as_overrides(raw.get("set"), "finetune.set")]
    return FinetuneSpec(str(raw.get("config", FinetuneSpec.config)), overrides)
