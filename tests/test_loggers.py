"""`train.loggers`: TensorBoard and W&B (its real offline writer) receive the same scalars and the final figures; a
backend that is asked for and not installed is a config error, not silence."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import tiny_config
from mimkit.config import ConfigError
from mimkit.engine.loggers import scalars_of

tensorboard = pytest.importorskip("tensorboard")
wandb = pytest.importorskip("wandb")


def test_scalars_are_every_number_of_an_event_keyed_by_split():
    train = {"event": "train", "step": 10, "epoch": 0, "loss": 0.5, "lr": 1e-3, "img_per_s": 300, "time": 1.0}
    assert scalars_of(train) == {"train/loss": 0.5, "train/lr": 1e-3, "train/img_per_s": 300.0}
    held = {"event": "eval", "split": "heldout", "step": 10, "loss": 0.4, "top1": 81.5, "skipped": False}
    assert scalars_of(held) == {"heldout/loss": 0.4, "heldout/top1": 81.5}


def test_a_backend_that_is_not_installed_or_unknown_is_a_config_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train.loggers: wandb is not installed here: `pip install wandb`"):
        tiny_config("train.loggers=[jsonl,wandb]")
    with pytest.raises(ConfigError, match="'mlflow' is not one of jsonl, tensorboard, wandb"):
        tiny_config("train.loggers=[mlflow]")
    with pytest.raises(ConfigError, match="names a backend twice"):
        tiny_config("train.loggers=[tensorboard,tensorboard]")
    with pytest.raises(ConfigError, match="train.wandb_mode"):
        tiny_config("train.wandb_mode=sometimes")


def test_tensorboard_and_wandb_receive_the_same_scalars_and_the_figures(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from wandb.sdk.wandb_run import Run

    from mimkit.engine.metrics import read_metrics
    from mimkit.training import pretrain

    sent = []  # what the real W&B run object was given, passed on to its offline writer
    original = Run.log

    def recording(self, data, step=None, **kwargs):
        sent.append((step, dict(data)))
        return original(self, data, step=step, **kwargs)

    monkeypatch.setattr(Run, "log", recording)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(
        "train.loggers=[jsonl,tensorboard,wandb]",
        "train.wandb_mode=offline",
        "train.log_every=4",
        "train.reconstruct=true",
    )
    run = tmp_path / "run"
    pretrain(cfg, run)

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tb = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    wb: dict[str, list] = {}
    for step, data in sent:
        for key, value in data.items():
            if isinstance(value, float):
                wb.setdefault(key, []).append((step, value))
    assert tb.keys() == wb.keys() and {"train/loss", "train/lr", "heldout/loss", "train_fixed/loss"} <= tb.keys()
    for key in tb:
        assert [s for s, _ in tb[key]] == [s for s, _ in wb[key]], key
        assert [v for _, v in tb[key]] == pytest.approx([v for _, v in wb[key]], rel=1e-6), key  # TB stores float32
    # and they are metrics.jsonl's numbers
    held = [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "heldout"]
    assert [s for s, _ in wb["heldout/loss"]] == [s for s, _ in held]
    assert [v for _, v in wb["heldout/loss"]] == pytest.approx([v for _, v in held])
    assert set(events.Tags()["images"]) == {"figures/loss_curve", "figures/reconstructions"}
    figures = [key for _, data in sent for key in data if key.startswith("figures/")]
    assert sorted(figures) == ["figures/loss_curve", "figures/reconstructions"]
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert next(offline.glob("*.wandb")).stat().st_size > 0  # the offline writer wrote the run
    assert offline.name.endswith((run / "wandb_run_id").read_text().strip())  # one W&B run per run directory
