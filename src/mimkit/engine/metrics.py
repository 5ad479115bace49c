"""metrics.jsonl (one JSON object per event), TensorBoard when installed, and a console progress display."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from mimkit.engine.atomic import atomic_write_text


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records; a half-written last line (killed mid-write) is ignored."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLogger:
    """Appends events to RUN_DIR/metrics.jsonl (rank 0 only) and mirrors their numbers to the backends of
    `train.loggers` (engine/loggers.py): TensorBoard, Weights & Biases."""

    def __init__(self, run_dir: Path, enabled: bool, backends: list[str] | None = None, train: Any = None, config=None):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.backends: list[Any] = []
        if enabled and backends:
            from mimkit.engine.loggers import open_backends

            self.backends = open_backends(backends, run_dir, train, config or {})
        self._fh = None
        self._last_step = 0

    def truncate_after(self, step: int) -> None:
        """On resume: drop events logged after the checkpoint we resume from (they will be logged again)."""
        self._keep(lambda r: r.get("step", 0) <= step)

    def drop_command(self, command: str) -> None:
        """Before a probe re-runs: drop the events an earlier run of `command` logged (the events of other commands
        sharing the directory stay)."""
        self._keep(lambda r: r.get("command") != command)

    def _keep(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite metrics.jsonl (atomically) with the events `keep` accepts."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path) if keep(r)]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a")
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self.backends:
            from mimkit.engine.loggers import scalars_of

            scalars, step = scalars_of(record), int(record.get("step", 0))
            self._last_step = max(self._last_step, step)
            for backend in self.backends:
                backend.log(scalars, step)

    def figures(self, paths: dict[str, Any]) -> None:
        """The run's final figures (name -> PNG path) to every backend, at the last logged step."""
        for backend in self.backends:
            backend.figures({name: Path(path) for name, path in paths.items()}, self._last_step)

    def close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        """The file and every backend (a W&B run is finished)."""
        self.close_file()
        for backend in self.backends:
            backend.close()
        self.backends = []


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class Progress:
    """A rich progress bar on a terminal; plain periodic lines elsewhere (CI, log files, SLURM)."""

    def __init__(self, total: int, start: int, enabled: bool, every: int, label: str = "pretrain", unit: str = "step"):
        self.total, self.start, self.enabled, self.every, self.unit = total, start, enabled, every, unit
        self.t0 = time.time()
        self.bar = None
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, loss: float, img_per_s: float, lr: float) -> None:
        if not self.enabled:
            return
        done = step - self.start
        eta = (time.time() - self.t0) / max(1, done) * (self.total - step)
        self.advance(step, f"loss {loss:.4f}  {img_per_s:,.0f} img/s  lr {lr:.2e}  eta {format_eta(eta)}")

    def advance(self, step: int, info: str) -> None:
        """Move to `step` of `total` with a free-form status text."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:
            print(f"{self.unit} {step}/{self.total}  {info}", flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
