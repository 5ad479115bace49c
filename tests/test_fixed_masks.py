"""method.fixed_masks (for over-fitting studies, DS1): each training image keeps the mask its evaluation uses, at
every step, for MAE and SimMIM; the default draws a new mask every epoch; methods that mask nothing refuse it; the
sweep that uses it loads; comparison cells recorded before the key existed still match."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from mimkit.config import ConfigError, resolved
from mimkit.data.keyed_random import FIXED_EPOCH, sample_keys


def _losses(method: str, fixed: bool) -> tuple[float, float, float]:
    """The training loss of one batch at epochs 0 and 1, and its evaluation loss (fixed keys, no ids)."""
    from mimkit.methods import build_method

    extra = [f"method.name={method}", f"method.fixed_masks={str(fixed).lower()}"]
    if method == "simmim":
        extra.append("method.mask_patch_size=4")
    cfg = resolved(tiny_config(*extra))
    torch.manual_seed(0)
    model = build_method(cfg).eval()  # deterministic: the mask is the only thing that changes
    ids = torch.arange(8)
    images = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        train = [model({"images": images, "ids": ids, "keys": sample_keys(ids, e)})["loss"] for e in (0, 1)]
        held = model({"images": images, "keys": sample_keys(ids, FIXED_EPOCH)})["loss"]
    return float(train[0]), float(train[1]), float(held)


@pytest.mark.parametrize("method", ["mae", "simmim"])
def test_fixed_masks_keep_each_images_evaluation_mask_at_every_epoch(method):
    first, second, held = _losses(method, fixed=True)
    assert first == second == held  # the same masks: bit-identical on one machine in one process
    first, second, held = _losses(method, fixed=False)
    assert first != second and first != held  # the papers' default: a new mask every epoch


def test_a_method_that_masks_nothing_refuses_fixed_masks():
    with pytest.raises(
        ConfigError, match="method.name=supervised does not support fixed masks; it is for mae and simmim"
    ):
        resolved(tiny_config("method.name=supervised", "model.num_classes=10", "method.fixed_masks=true"))


def test_the_memorisable_over_fitting_sweep_loads(tmp_path):
    from mimkit.config import load_config
    from mimkit.scaling.grid import load_sweep

    sweep = load_sweep("scaling_fmnist_overfit_memorise", tmp_path / "out")
    long = load_sweep("scaling_fmnist_overfit_long", tmp_path / "long")
    assert [r.axes for r in sweep.runs] == [r.axes for r in long.runs]  # the same grid as the sweep it varies
    for run in sweep.runs:
        cfg = resolved(load_config(sweep.base, run.overrides))
        assert cfg.method.fixed_masks and not cfg.data.hflip
        assert list(cfg.data.crop_scale) == [1.0, 1.0] and list(cfg.data.crop_ratio) == [1.0, 1.0]


def test_comparison_cells_recorded_before_each_added_key_still_match(tmp_path):
    """ADDED_AT_DEFAULT: a marker hashed before the last addition (method.fixed_masks), or before both additions
    (the probe keys too), matches a config at their defaults; a config that sets the new key runs the cell again."""
    import hashlib
    import json

    from mimkit.eval.compare import PRESENTATION_KEYS, recorded_row

    cfg = tiny_config()

    def hashed_without(*keys: tuple[str, str]) -> str:
        tree = cfg.to_dict()
        tree["train"] = {k: v for k, v in tree["train"].items() if k not in PRESENTATION_KEYS}  # as config_hash does
        for section, key in keys:
            del tree[section][key]
        return hashlib.sha1(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]

    marker = tmp_path / "cell.json"
    for era in (
        [("method", "fixed_masks")],
        [("method", "fixed_masks"), ("probe", "lr_grid"), ("probe", "val_fraction")],
    ):
        marker.write_text(json.dumps({"config_hash": hashed_without(*era), "row": {"value": 2}}))
        assert recorded_row(marker, cfg) == {"value": 2}
    marker.write_text(json.dumps({"config_hash": hashed_without(("method", "fixed_masks")), "row": {"value": 2}}))
    assert recorded_row(marker, tiny_config("method.fixed_masks=true")) is None
