"""Errors that point at the command that fixes them, names as the README writes them, and a readable recipe list."""

from __future__ import annotations

import pytest

from conftest import cli_error
from mimkit.cli import _description, main
from mimkit.config import ConfigError, load_config
from mimkit.scaling.grid import SWEEPS_DIR, resolve_sweep_file


def test_a_sweep_given_as_a_recipe_says_to_use_mimkit_sweep():
    with pytest.raises(ConfigError, match="is a sweep .* `mimkit sweep --config scaling_fmnist --out DIR`"):
        load_config("scaling_fmnist")
    with pytest.raises(ConfigError, match="is a sweep"):
        load_config("sweeps/scaling_fmnist")


@pytest.mark.parametrize("name", ["scaling_fmnist", "sweeps/scaling_fmnist", "sweeps/scaling_fmnist.yaml"])
def test_shipped_sweeps_resolve_by_the_readmes_names(name):
    assert resolve_sweep_file(name) == SWEEPS_DIR / "scaling_fmnist.yaml"


def test_a_foreign_checkpoint_as_init_points_at_mimkit_import(capsys, tmp_path):
    hf = tmp_path / "hf_vitmae"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "vit_mae"}')
    err = cli_error(capsys, "finetune", "--init", str(hf), "--out", str(tmp_path / "ft"))
    assert f"`mimkit import {hf} --out RUN`" in err
    plain = tmp_path / "empty"
    plain.mkdir()
    assert "mimkit import" not in cli_error(capsys, "finetune", "--init", str(plain), "--out", str(tmp_path / "f2"))


def test_recipe_descriptions_are_whole_sentences_across_comment_lines(capsys):
    text = "# First line of a sentence that\n# ends here. Second sentence.\nseed: 0\n# not the description\n"
    assert _description(text) == "First line of a sentence that ends here."
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "MAE-pretrained teacher's last" in out.replace("\n", " ")  # distill_fmnist_tiny's second comment line
    assert "sweep: mimkit sweep --config NAME" in out
