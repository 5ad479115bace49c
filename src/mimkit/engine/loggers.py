"""Logging backends beside metrics.jsonl: TensorBoard and Weights & Biases, behind one switch (`train.loggers`).
Every backend receives the same scalars (each numeric field of each event, keyed SPLIT/NAME: train/loss,
heldout/top1, train_fixed/loss, ...) and the run's final figures. A backend that is asked for and not installed is
a config error, never a silent no-op."""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path
from typing import Any

from mimkit.errors import check

BACKENDS = {"jsonl": None, "tensorboard": "tensorboard", "wandb": "wandb"}  # name -> the module it needs
NOT_SCALARS = ("step", "epoch", "time")


def requested(t: Any) -> list[str]:
    """The backends a train section asks for beyond metrics.jsonl (the older `tensorboard: true` included when
    tensorboard is installed, as it always was)."""
    names = [n for n in t.loggers if n != "jsonl"]
    if t.tensorboard and "tensorboard" not in names and importlib.util.find_spec("tensorboard") is not None:
        names.append("tensorboard")
    return names


def check_loggers(t: Any) -> None:
    for name in t.loggers:
        check(name in BACKENDS, f"train.loggers: '{name}' is not one of {', '.join(BACKENDS)}")
        module = BACKENDS[name]
        check(
            module is None or importlib.util.find_spec(module) is not None,
            f"train.loggers: {name} is not installed here: `pip install {module}` (or drop it from train.loggers)",
        )
    check(len(set(t.loggers)) == len(t.loggers), f"train.loggers: {t.loggers} names a backend twice")
    check(
        t.wandb_mode in (None, "online", "offline", "disabled"),
        f"train.wandb_mode: {t.wandb_mode!r} must be online, offline, disabled or null",
    )
    check(bool(t.wandb_project.strip()), "train.wandb_project: must not be empty")


def scalars_of(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one metrics.jsonl event, keyed SPLIT/NAME (a training interval's split is 'train')."""
    split = record.get("split") or "train"
    return {
        f"{split}/{key}": float(value)
        for key, value in record.items()
        if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class TensorBoardBackend:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def figures(self, paths: dict[str, Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        for name, path in paths.items():
            with Image.open(path) as img:
                self.writer.add_image(f"figures/{name}", np.asarray(img.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbBackend:
    def __init__(self, run_dir: Path, project: str, mode: str | None, config: dict[str, Any]):
        import wandb

        # one W&B run per run directory, kept across resumes: its id is stored beside the metrics
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        if not id_file.is_file():
            from mimkit.engine.atomic import atomic_write_text

            atomic_write_text(id_file, run_id)
        self.run = wandb.init(
            project=project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir), mode=mode, config=config
        )

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def figures(self, paths: dict[str, Path], step: int) -> None:
        import wandb

        self.run.log({f"figures/{name}": wandb.Image(str(path)) for name, path in paths.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_backends(names: list[str], run_dir: Path, t: Any, config: dict[str, Any]) -> list[Any]:
    backends = []
    for name in names:
        if name == "tensorboard":
            backends.append(TensorBoardBackend(run_dir))
        elif name == "wandb":
            backends.append(WandbBackend(run_dir, t.wandb_project, t.wandb_mode, config))
    return backends
