"""`--steps N` / `--epochs N` (config/length.py): one flag changes a run's length, and warm-up, evaluation and
checkpoint intervals follow by the written-out rule; every recipe states its length in one unit."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from conftest import run_cli, sets
from mimkit.config import ConfigError, load_config
from mimkit.config.length import with_length
from mimkit.config.load import RECIPES_DIR


def test_shortening_a_step_recipe_keeps_the_warmup_share_and_the_number_of_evaluations():
    recipe = load_config("mae_fmnist_tiny")
    t = recipe.train
    assert (t.steps, t.warmup_steps, t.eval_every, t.ckpt_every) == (800, 50, 100, 250)
    cfg, notes = with_length(recipe, steps=30)
    assert cfg.train.steps == 30 and cfg.train.epochs is None
    assert cfg.train.warmup_steps == round(50 / 800 * 30)  # 50 warm-up steps do not fit in 15: same share, 2
    assert cfg.train.eval_every == math.ceil(30 / 8) and cfg.train.ckpt_every == math.ceil(30 / 4)
    assert cfg.train.log_every == 3  # about ten log lines
    assert notes[0].startswith("length: 30 steps") and "do not fit" in notes[1]
    assert recipe.train.steps == 800  # the loaded config is not changed in place


def test_lengthening_keeps_a_warmup_that_fits():
    cfg, notes = with_length(load_config("mae_fmnist_tiny"), steps=4000)
    assert cfg.train.warmup_steps == 50 and cfg.train.eval_every == 500 and cfg.train.log_every == 25
    assert len(notes) == 1  # nothing to say about a warm-up that was kept


def test_steps_on_an_epoch_recipe_count_in_steps_with_the_recipes_shares():
    recipe = load_config("finetune_fmnist_tiny")
    assert (recipe.train.epochs, recipe.train.warmup_epochs) == (3, 0.5)
    cfg, notes = with_length(recipe, steps=30)
    t = cfg.train
    assert (t.steps, t.epochs, t.warmup_epochs) == (30, None, None)
    assert t.warmup_steps == 5  # 0.5 of 3 epochs is a sixth of the run
    assert t.eval_every == 10  # the recipe evaluated once per epoch: three evaluations
    assert "0.5 of 3 epochs = 5 of 30 steps" in notes[1]


def test_epochs_flag_on_both_kinds_of_recipe():
    cfg, _ = with_length(load_config("finetune_fmnist_tiny"), epochs=1)
    assert (cfg.train.epochs, cfg.train.warmup_epochs) == (1, 0.5)  # half an epoch fits in half of one
    cfg, notes = with_length(load_config("finetune_fmnist_tiny"), epochs=0.5)
    assert cfg.train.warmup_epochs == pytest.approx(0.5 / 3 * 0.5) and "same share" in notes[1]
    cfg, notes = with_length(load_config("mae_fmnist_tiny"), epochs=2)
    assert cfg.train.epochs == 2 and cfg.train.warmup_epochs == pytest.approx(50 / 800 * 2)
    assert "50 of 800 steps" in notes[1]
    # a warm-up given in epochs beside a step recipe is the user's: kept, not replaced by the recipe's share
    cfg, notes = with_length(load_config("mae_fmnist_tiny", ["train.warmup_epochs=5"]), epochs=100)
    assert (cfg.train.epochs, cfg.train.warmup_epochs) == (100, 5) and "5 of 100 epochs" in notes[1]


def test_the_probe_counts_whole_epochs():
    cfg, notes = with_length(load_config("probe_fmnist"), epochs=5, probe=True)
    assert (cfg.probe.epochs, cfg.probe.warmup_epochs) == (5, round(10 / 90 * 5))
    with pytest.raises(ConfigError, match="counts its length in epochs"):
        with_length(load_config("probe_fmnist"), steps=5, probe=True)
    with pytest.raises(ConfigError, match="whole epochs"):
        with_length(load_config("probe_fmnist"), epochs=2.5, probe=True)


@pytest.mark.parametrize(
    "steps, epochs, message",
    [(0, None, "--steps: 0 must be a positive"), (None, -1.0, "--epochs: -1.0"), (5, 1.0, "not both")],
)
def test_impossible_lengths_are_named(steps, epochs, message):
    with pytest.raises(ConfigError, match=message):
        with_length(load_config("mae_fmnist_tiny"), steps=steps, epochs=epochs)


def test_every_recipe_states_its_length_in_one_unit():
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        train = (yaml.safe_load(path.read_text()) or {}).get("train") or {}
        in_steps = {"steps", "warmup_steps"} & train.keys()
        in_epochs = {"epochs", "warmup_epochs"} & train.keys()
        assert not (in_steps and in_epochs), f"{path.name} mixes {sorted(in_steps)} with {sorted(in_epochs)}"


def test_one_flag_shortens_a_real_run_whose_recipe_warms_up_longer(tmp_path):
    """The friction the flag removes: `--set train.steps=12` alone fails (warm-up 50 > 12); `--steps 12` runs."""
    common = ["device=cpu", "data.name=synthetic", "data.synthetic_size=64", "model.name=mim_vit_femto"]
    common += ["train.batch_size=16", "train.eval_samples=16", "train.tensorboard=false", "train.reconstruct=false"]
    failed = run_cli(
        "pretrain", "--config", "mae_fmnist_tiny", "--out", str(tmp_path / "b"), *sets([*common, "train.steps=12"])
    )
    assert failed.returncode == 2 and "train.warmup_steps: 50" in failed.stderr
    run = tmp_path / "c"
    proc = run_cli("pretrain", "--config", "mae_fmnist_tiny", "--out", str(run), "--steps", "12", *sets(common))
    assert proc.returncode == 0, proc.stderr
    assert "[train] length: 12 steps (--steps), evaluated every 2, saved every 3" in proc.stdout
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (saved["steps"], saved["warmup_steps"], saved["eval_every"]) == (12, 1, 2)
    assert json.loads((run / "results.json").read_text())["step"] == 12


def test_compare_cells_that_train_take_the_length_and_the_others_do_not():
    from mimkit.eval.compare import Cell, cell_config

    def cell(protocol, task="classification"):
        return cell_config(Cell("m", "scratch", protocol, task), ["data.name=synthetic"], {}, (None, 4.0))

    assert cell("finetune").train.epochs == 4.0
    assert cell("linprobe", "depth").train.epochs == 4.0  # a frozen task head is trained by the Engine
    assert cell("linprobe").probe.epochs == 4  # the classification probe counts whole epochs
    assert cell("knn").probe.epochs == load_config("probe_fmnist").probe.epochs
    stepped = cell_config(Cell("m", "scratch", "finetune", "keypoints"), [], {}, (12, None))
    assert (stepped.train.steps, stepped.train.epochs) == (12, None)
    plain = cell_config(Cell("m", "scratch", "linprobe", "classification"), [], {}, (12, None))
    assert plain.probe.epochs == load_config("probe_fmnist").probe.epochs  # --steps leaves the probe alone
