"""Recipes, YAML files and run directories -> a validated Config; a Config -> config.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mimkit.config.checks import validate
from mimkit.config.coerce import build_dataclass, parse_override, set_dotted
from mimkit.config.schema import Config
from mimkit.errors import ConfigError
from mimkit.methods import registry
from mimkit.methods.spec import MethodConfig

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


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
    if (RECIPES_DIR / "sweeps" / f"{recipe_or_path}.yaml").is_file():
        raise _sweep_given(str(recipe_or_path))
    raise ConfigError(
        f"config '{recipe_or_path}' is neither a YAML file, a run directory nor a recipe. "
        f"Recipes: {', '.join(recipe_names())} (see `mimkit recipes`)"
    )


def _sweep_given(name: str) -> ConfigError:
    return ConfigError(
        f"'{name}' is a sweep (a grid of runs), not a recipe: run it with `mimkit sweep --config {name} --out DIR`"
    )


def load_config(recipe_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a recipe name, YAML path or run directory, apply `key=value` overrides, validate."""
    tree: dict[str, Any] = {}
    if recipe_or_path:
        path = resolve_recipe(recipe_or_path)
        tree = read_config_file(path)
        if {"base", "grid"} <= tree.keys():
            raise _sweep_given(str(recipe_or_path))
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    return config_from_dict(tree)


def read_config_file(path: Path) -> dict[str, Any]:
    """A config file's mapping: UTF-8 YAML whose top level is a mapping of sections (or empty)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror})") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (seed:, data:, model:, ...) at the top level, not a "
            f"{type(tree).__name__}"
        )
    return tree


def config_from_dict(tree: dict[str, Any]) -> Config:
    """A validated Config from a nested mapping (a parsed YAML file); missing keys take their defaults."""
    cfg = build_dataclass(Config, tree, replace_types={MethodConfig: registry.method_config_class()})
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    from mimkit.engine.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
