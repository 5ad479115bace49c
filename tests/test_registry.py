"""The method registry: a new method is added by one registry entry alone (its options, checks and builder), then
validates, trains, evaluates, checkpoints and reloads through the same code as the built-in methods."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from mimkit.config import ConfigError, load_config, resolved
from mimkit.errors import one_of
from mimkit.methods import Method, MethodSpec, build_method, registry
from mimkit.methods.spec import MethodConfig
from mimkit.models.encoder import create_encoder, patch_size, patchify


# ---------------------------------------------------------------------------------------- a toy method, in full
@dataclass
class AutoencoderOptions:
    ae_loss: str = "mse"  # mse | l1
    ae_weight: float = 1.0


def check_autoencoder_options(meth: Any) -> None:
    one_of("method.ae_loss", meth.ae_loss, ["mse", "l1"])
    if meth.ae_weight <= 0:
        raise ConfigError(f"method.ae_weight: {meth.ae_weight} must be positive")


class PatchAutoencoder(Method):
    """Every patch token predicts its own pixels through a linear head (nothing masked): the smallest objective
    that trains an encoder."""

    name = "autoencoder"

    def __init__(self, encoder: torch.nn.Module, loss: str, weight: float):
        super().__init__()
        self.encoder, self.loss, self.weight = encoder, loss, weight
        self.patch = patch_size(encoder)
        self.head = torch.nn.Linear(encoder.embed_dim, self.patch**2 * encoder.patch_embed.proj.in_channels)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = batch["images"]
        tokens = self.encoder.forward_features(images)[:, self.encoder.num_prefix_tokens :]
        target = patchify(images, self.patch)
        error = F.mse_loss if self.loss == "mse" else F.l1_loss
        return {"loss": self.weight * error(self.head(tokens), target)}


def build_autoencoder(cfg: Any) -> PatchAutoencoder:
    return PatchAutoencoder(create_encoder(cfg, fixed_sincos=False), cfg.method.ae_loss, cfg.method.ae_weight)


AUTOENCODER = MethodSpec(
    name="autoencoder",
    summary="toy: each patch token reconstructs its own pixels",
    build=build_autoencoder,
    options=AutoencoderOptions,
    check_options=check_autoencoder_options,
)


@pytest.fixture
def autoencoder():
    registry.register(AUTOENCODER)
    try:
        yield AUTOENCODER
    finally:
        registry.unregister(AUTOENCODER.name)


# -------------------------------------------------------------------------------------------------------- tests
def test_a_registered_method_trains_evaluates_and_reloads(autoencoder, tmp_path):
    from mimkit.api import load
    from mimkit.training import pretrain

    cfg = tiny_config("method.name=autoencoder", "method.ae_loss=l1", "train.steps=8")
    assert cfg.method.ae_loss == "l1" and cfg.method.ae_weight == 1.0  # its options are config keys
    results = pretrain(cfg, tmp_path / "run")
    assert results["step"] == 8
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    heldout = [m["loss"] for m in metrics if m["event"] == "eval" and m["split"] == "heldout"]
    assert len(heldout) >= 2 and all(torch.isfinite(torch.tensor(heldout)))  # the default evaluators ran
    assert heldout[-1] < heldout[0]  # an autoencoder's held-out L1 falls within a few steps at lr 1e-3
    assert results["best_heldout_loss"] == pytest.approx(min(heldout), rel=1e-6)
    method = load(tmp_path / "run")  # the saved config names the method and its options; the weights fit
    assert isinstance(method, PatchAutoencoder) and method.loss == "l1"


def test_a_registered_method_validates_its_options(autoencoder):
    with pytest.raises(ConfigError, match="method.ae_loss: 'huber' is not one of mse, l1"):
        tiny_config("method.name=autoencoder", "method.ae_loss=huber")
    with pytest.raises(ConfigError, match="method.ae_weight"):
        tiny_config("method.name=autoencoder", "method.ae_weight=0")
    with pytest.raises(ConfigError, match="unknown config key 'method.ae_los'.*Did you mean 'ae_loss'"):
        tiny_config("method.name=autoencoder", "method.ae_los=l1")


def test_the_registry_is_what_the_config_knows(autoencoder):
    assert "autoencoder" in registry.names()
    fields = [f.name for f in dataclasses.fields(registry.method_config_class())]
    shared = [f.name for f in dataclasses.fields(MethodConfig)]
    assert fields[: len(shared)] == shared and fields[-2:] == ["ae_loss", "ae_weight"]
    registry.unregister("autoencoder")
    with pytest.raises(ConfigError, match="method.name: 'autoencoder' is not one of mae, simmim, supervised"):
        tiny_config("method.name=autoencoder")
    with pytest.raises(ConfigError, match="unknown config key 'method.ae_loss'"):
        tiny_config("method.ae_loss=l1")
    registry.register(autoencoder)  # the fixture unregisters it again


def test_register_refuses_a_taken_name_or_option_key(autoencoder):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(autoencoder)

    @dataclass
    class Clash:
        norm_pix: bool = False

    with pytest.raises(ValueError, match="method.norm_pix is already declared by method 'mae'"):
        registry.register(dataclasses.replace(autoencoder, name="clash", options=Clash))
    assert "clash" not in registry.names()


def test_built_in_specs_declare_what_the_code_used_to_branch_on():
    """The facts the registry now carries, as the published methods have them."""
    cfg = resolved(load_config(None, ["method.name=mae"]))
    assert (cfg.method.mask_ratio, cfg.method.mask_type, cfg.data.crop_scale) == (0.75, "random", [0.2, 1.0])
    cfg = resolved(load_config(None, ["method.name=simmim"]))
    assert (cfg.method.mask_ratio, cfg.method.mask_type, cfg.data.crop_scale) == (0.6, "simmim", [0.67, 1.0])
    assert registry.get("mocov3").views == 2 and registry.get("supervised").needs_labels
    assert registry.get("distill").needs_teacher
    assert [s.name for s in registry.specs() if s.swin] == ["simmim", "supervised"]


def test_every_built_in_method_builds_through_its_entry():
    for name in ("mae", "simmim", "supervised", "mocov3"):
        cfg = resolved(tiny_config(f"method.name={name}", "model.num_classes=10"))
        method = build_method(cfg)
        assert isinstance(method, Method) and method.name == name


def test_mimkit_methods_lists_the_registry(autoencoder, capsys):
    from mimkit.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "autoencoder" in out and "ae_loss=mse, ae_weight=1.0" in out and "moco_temperature=0.2" in out
