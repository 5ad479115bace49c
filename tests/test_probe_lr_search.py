"""probe.lr_grid: the linear probe's learning rate chosen on a class-balanced validation split of the training
images (never the test split), then the head retrained on every training image with it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import TINY, tiny_config
from mimkit.config import ConfigError, load_config, resolved
from mimkit.eval.linprobe import choose_lr, linprobe, train_head, validation_split

PROBE = ["probe.epochs=3", "probe.warmup_epochs=1", "probe.batch_size=32", "probe.optimizer=sgd"]


def test_validation_split_is_class_balanced_disjoint_and_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, val = validation_split(labels, 0.1, seed=3)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))  # disjoint and complete
    assert torch.bincount(labels[val]).tolist() == [5, 3, 2]  # 10% of every class
    assert torch.equal(val, validation_split(labels, 0.1, seed=3)[1])
    assert not torch.equal(val, validation_split(labels, 0.1, seed=4)[1])
    _, tiny = validation_split(torch.tensor([0, 0, 1, 1, 1]), 0.01, seed=0)
    assert torch.bincount(torch.tensor([0, 0, 1, 1, 1])[tiny]).tolist() == [1, 1]  # at least one per class


def test_the_lr_that_learns_is_chosen_on_validation_images_only():
    """Two separable classes: an lr of 1e-7 leaves the head near its random start, 0.5 learns them. The chosen lr
    is 0.5, and the validation scores recorded are those of heads trained on the other training images."""
    torch.manual_seed(0)
    x = torch.cat([torch.randn(60, 8) + 2.0, torch.randn(60, 8) - 2.0])
    y = torch.tensor([0] * 60 + [1] * 60)
    cfg = tiny_config(*PROBE, "probe.lr_grid=[1e-7,0.5]", "probe.val_fraction=0.25")
    chosen, record = choose_lr(x, y, 2, cfg, log=lambda *_: None)
    assert chosen.probe.base_lr == 0.5 and record["chosen"] == 0.5
    assert record["grid"] == [1e-7, 0.5] and record["val_images"] == 30
    train, val = validation_split(y, 0.25, cfg.seed)
    for lr, score in zip(record["grid"], record["val_top1"]):
        trial = tiny_config(*PROBE, f"probe.base_lr={lr}")
        _, history = train_head(x[train], y[train], x[val], y[val], 2, trial)
        assert score == pytest.approx(history[-1]["top1"])
    assert record["val_top1"][1] == 100.0 and record["val_top1"][0] < 100.0


def test_equal_scores_choose_the_smaller_lr():
    x, y = torch.randn(40, 4), torch.tensor([0, 1] * 20)
    cfg = tiny_config(*PROBE, "probe.lr_grid=[0.3,0.3,0.1]")
    chosen, record = choose_lr(x, y, 2, cfg, log=lambda *_: None)
    top = max(record["val_top1"])
    assert chosen.probe.base_lr == min(lr for lr, s in zip(record["grid"], record["val_top1"]) if s == top)


def test_linprobe_records_the_search_and_trains_with_the_chosen_lr(tmp_path):
    cfg = tiny_config("init=pixels", *PROBE, "probe.lr_grid=[0.01,1.0]")
    res = linprobe(cfg, tmp_path / "lin")
    assert res["lr_search"]["chosen"] == res["base_lr"] in (0.01, 1.0)
    assert len(res["lr_search"]["val_top1"]) == 2
    assert json.loads((tmp_path / "lin/linprobe.json").read_text())["lr_search"] == res["lr_search"]
    saved = yaml.safe_load((tmp_path / "lin/config.yaml").read_text())
    assert saved["probe"]["base_lr"] == res["base_lr"]  # the run's config is what trained the head
    # the final head is the chosen lr's, trained on every training image: a plain probe at that lr scores the same
    plain = linprobe(tiny_config("init=pixels", *PROBE, f"probe.base_lr={res['base_lr']}"), tmp_path / "plain")
    assert res["top1"] == pytest.approx(plain["top1"]) and "lr_search" not in plain


@pytest.mark.parametrize(
    "setting, named",
    [("probe.lr_grid=[0.1,-1]", "probe.lr_grid"), ("probe.val_fraction=1.5", "probe.val_fraction")],
)
def test_an_impossible_search_is_refused(setting, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        resolved(load_config(None, [*TINY, setting]))


def test_too_few_images_for_a_validation_split_is_a_user_error():
    cfg = tiny_config(*PROBE, "probe.lr_grid=[0.1]")
    with pytest.raises(ConfigError, match="no validation split"):
        choose_lr(torch.randn(3, 4), torch.tensor([0, 1, 2]), 3, cfg)
