"""Typed configs: YAML recipes + dotted `--set key=value` overrides, validated before any work starts.

Every key a run can take is a dataclass field, so an unknown key or an impossible value is caught with a message
naming the key and the valid choices, instead of surfacing as a traceback an hour into training. The package:
schema.py (the root Config and where each section lives), coerce.py (YAML values and overrides -> typed fields),
load.py (recipes, files, run directories), checks.py (validation and derived defaults, section by section).
"""

from mimkit.config.checks import resolved, validate
from mimkit.config.coerce import parse_override
from mimkit.config.load import RECIPES_DIR, config_from_dict, load_config, recipe_names, resolve_recipe, save_config
from mimkit.config.schema import Config
from mimkit.data.mask_layout import default_mask_patch_size
from mimkit.data.options import DECODERS, DataConfig
from mimkit.engine.options import COMPILE_MODES, TrainConfig, resolve_epochs
from mimkit.errors import ConfigError
from mimkit.eval.options import ProbeConfig
from mimkit.methods.distill.options import DistillConfig
from mimkit.methods.spec import MethodConfig
from mimkit.models.options import ModelConfig

__all__ = [
    "COMPILE_MODES",
    "DECODERS",
    "RECIPES_DIR",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "MethodConfig",
    "ModelConfig",
    "ProbeConfig",
    "TrainConfig",
    "config_from_dict",
    "default_mask_patch_size",
    "load_config",
    "parse_override",
    "recipe_names",
    "resolve_epochs",
    "resolve_recipe",
    "resolved",
    "save_config",
    "validate",
]
