"""The root of a run's config: seed, device, initial weights and one section per domain. Each section's keys,
checks and derived defaults live with the domain that reads them:

| section | module |
|---|---|
| `data:` | mimkit/data/options.py |
| `model:` | mimkit/models/options.py |
| `method:` | mimkit/methods/spec.py (shared keys) + each method's options.py, collected by methods/registry.py |
| `train:` | mimkit/engine/options.py |
| `probe:` | mimkit/eval/options.py |
| `distill:` | mimkit/methods/distill/options.py |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mimkit.data.options import DataConfig
from mimkit.engine.options import TrainConfig
from mimkit.eval.options import ProbeConfig
from mimkit.methods import registry
from mimkit.methods.distill.options import DistillConfig
from mimkit.methods.spec import MethodConfig
from mimkit.models.options import ModelConfig

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    init: str | None = None  # weights to start from: run dir / checkpoint, exported .safetensors, timm:NAME, scratch
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # the shared keys (methods/spec.py) and every registered method's options (see registry.method_config_class)
    method: MethodConfig = field(default_factory=lambda: registry.method_config_class()())
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
