"""MAE (He et al. 2022): the model (model.py, named as the paper's steps), its options and its registry entry."""

from mimkit.methods.mae.model import MAE, build_mae
from mimkit.methods.mae.options import MAEOptions
from mimkit.methods.mae.spec import SPEC

__all__ = ["MAE", "MAEOptions", "SPEC", "build_mae"]
