"""End to end through the command line: pretrain on real Fashion-MNIST and on an image folder, reconstructions,
`mimkit.load`, recipes, the benchmark, and (on a GPU) bf16 autocast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, cli_error, run_cli, sets, tiny_config
from mimkit import load

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed")
@pytest.mark.parametrize("method", ["mae", "simmim"])
def test_pretrain_fashion_mnist_end_to_end(tmp_path, method):
    recipe = f"{method}_fmnist_tiny"
    overrides = [
        "device=cpu",
        "data.fraction=0.02",
        "model.name=mim_vit_femto",
        "train.steps=30",
        "train.warmup_steps=3",
        "train.batch_size=64",
        "train.eval_every=10",
        "train.eval_samples=128",
        "train.ckpt_every=10",
        "train.log_every=10",
        "train.tensorboard=false",
        "train.base_lr=1e-3",
    ]
    proc = run_cli("pretrain", "--config", recipe, "--out", str(tmp_path / "run"), *sets(overrides), check=True)
    assert "step 30/30" in proc.stdout and "img/s" in proc.stdout and "eta" in proc.stdout
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["train_images"] == 1200  # 2% of 60k, class-balanced
    assert results["heldout_images"] == 10000
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    heldout = [r["loss"] for r in records if r.get("split") == "heldout"]
    assert len(heldout) == 4 and heldout[-1] < heldout[0]  # learning shows on held-out data with fixed masks
    assert {r["split"] for r in records} >= {"train", "heldout", "train_fixed"}
    assert all({"step", "epoch", "split", "loss", "time"} <= r.keys() for r in records)
    for fig in ("loss_curves.png", "reconstructions.png"):
        with Image.open(tmp_path / "run/figures" / fig) as img:
            assert img.size[0] > 300
    model = load(tmp_path / "run")
    assert model.name == method and not model.training
    again = run_cli("reconstruct", str(tmp_path / "run"), "--out", str(tmp_path / "rec.png"), "--n", "3", check=True)
    assert (tmp_path / "rec.png").is_file() and "rec.png" in again.stdout


def test_resolved_config_reruns_as_is(tmp_path):
    run_cli("pretrain", "--config", "mae_fmnist_tiny", "--out", str(tmp_path / "a"), *sets(TINY), check=True)
    run_cli("pretrain", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b"), check=True)
    assert (tmp_path / "a/config.yaml").read_text() == (tmp_path / "b/config.yaml").read_text()
    wa = load(tmp_path / "a").state_dict()
    wb = load(tmp_path / "b").state_dict()
    # same seed, same config: same weights, bit-exact (same machine, same process and thread count)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_pretrain_on_image_folder_skips_bad_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(20):
            arr = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
            mode = ["RGB", "L", "RGBA", "P"][i % 4]
            Image.fromarray(arr).convert(mode).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs/cats/broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "imgs/dogs/empty.png").write_bytes(b"")
    overrides = [o for o in TINY if not o.startswith("data.")] + [
        "data.name=folder",
        f"data.root={tmp_path / 'imgs'}",
        "data.img_size=16",
        "data.val_fraction=0.1",
    ]
    proc = run_cli(
        "pretrain", "--config", "mae_fmnist_tiny", "--out", str(tmp_path / "run"), *sets(overrides), check=True
    )
    assert "skipped 2 image(s)" in proc.stdout and "could not be read" in proc.stdout
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["skipped_images"] == 2 and results["train_images"] + results["heldout_images"] == 40
    missing = run_cli(
        "pretrain",
        "--config",
        "mae_fmnist_tiny",
        "--out",
        str(tmp_path / "run2"),
        *sets([*overrides, f"data.root={tmp_path / 'nope'}"]),
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_missing_fashion_mnist_is_a_clear_error(tmp_path, monkeypatch):
    from mimkit.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MIMKIT_DATA", raising=False)
    with pytest.raises(fashion_mnist.DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.locate(str(tmp_path / "empty"), allow_download=False)


def test_recipes_and_models_listed():
    proc = run_cli("recipes", check=True)
    for name in ("mae_vit_base_in1k", "simmim_vit_base_in1k", "mae_fmnist_tiny", "simmim_fmnist_tiny"):
        assert name in proc.stdout
    models = run_cli("models", check=True)
    sizes = [float(line.split("encoder")[1].split("M")[0]) for line in models.stdout.splitlines() if "encoder" in line]
    assert max(sizes) / min(sizes) >= 30  # presets span a scaling study


def test_bench_pretrain_compares_with_hf(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "bench"
    proc = run_cli(
        "bench",
        "pretrain",
        "--config",
        "mae_fmnist_tiny",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--compare",
        "hf",
        "--out",
        str(out),
        *sets(["device=cpu", "model.name=mim_vit_femto", "train.batch_size=16"]),
        check=True,
    )
    result = json.loads((out / "results.json").read_text())
    assert result["mimkit"]["img_per_s"] > 0 and result["hf"]["img_per_s"] > 0
    assert [p.name for p in out.iterdir()] == ["results.json"]
    assert result["ratio_mimkit_over_hf"] == pytest.approx(result["mimkit"]["img_per_s"] / result["hf"]["img_per_s"])
    assert "mimkit / HF" in proc.stdout and "{" not in proc.stdout  # a summary, not the JSON
    assert f"{result['ratio_mimkit_over_hf']:.2f}x" in proc.stdout
    # the profiler's C++ side (libkineto) prints start/stop markers and, without a GPU, a device-count error
    assert "profiler_start" not in proc.stderr and "gpuGetDeviceCount" not in proc.stderr
    for impl in ("mimkit", "hf"):  # MFU against the measured peak, and where the time goes
        entry = result[impl]
        assert entry["mfu"] == pytest.approx(entry["gflop_per_img"] * 1e9 * entry["img_per_s"] / result["peak_flops"])
        assert sum(entry["breakdown"]["shares"].values()) == pytest.approx(1.0)
    assert "Where the time goes" in proc.stdout and "pretrain  hf" in proc.stdout


def test_bench_pretrain_refuses_what_it_cannot_time(capsys):
    assert "MAE config" in cli_error(
        capsys, "bench", "pretrain", "--config", "simmim_fmnist_tiny", "--compare", "hf", "--set", "device=cpu"
    )
    assert "--breakdown-steps" in cli_error(
        capsys, "bench", "pretrain", "--config", "mae_fmnist_tiny", "--breakdown-steps", "-1", "--set", "device=cpu"
    )
    assert "is a directory" in cli_error(capsys, "bench", "suite", "--device", "cpu", "--out", "bench-suite.json")


def test_bench_loader_times_the_training_stream(tmp_path):
    from mimkit.bench.loader_bench import run_loader_bench

    cfg = tiny_config("train.batch_size=8", "data.img_size=24")
    result = run_loader_bench(cfg, steps=3, warmup=1, out=tmp_path / "loader")
    assert result["batch_shape"] == [8, 1, 24, 24]  # the stream's own augmented batch, at the configured size
    assert result["img_per_s"] == pytest.approx(3 * 8 / (result["batch_ms"] * 3 / 1000))
    assert 0 < json.loads((tmp_path / "loader" / "results.json").read_text())["config"]["train_images"] <= 128


def test_blockwise_masks_train(tmp_path):
    from mimkit.config import resolved
    from mimkit.training import pretrain

    cfg = tiny_config("method.mask_type=blockwise", "train.steps=4")
    results = pretrain(cfg, tmp_path / "run")
    assert results["step"] == 4 and np.isfinite(results["final_heldout_loss"])
    assert resolved(cfg).method.mask_type == "blockwise"


@pytest.mark.gpu
def test_bf16_autocast_training_on_gpu(tmp_path):
    from mimkit.training import pretrain

    cfg = tiny_config("device=cuda", "train.precision=auto", "train.steps=4")
    results = pretrain(cfg, tmp_path / "run")
    assert np.isfinite(results["final_heldout_loss"])


def test_batch_larger_than_the_data_subset_is_a_clear_error(capsys, tmp_path):
    assert "fewer than one batch" in cli_error(
        capsys,
        "pretrain",
        "--config",
        "mae_fmnist_tiny",
        "--out",
        str(tmp_path / "run"),
        *sets([*TINY, "data.synthetic_size=8"]),
    )


def test_every_error_a_user_can_fix_is_one_user_error():
    """The CLI and the demo catch UserError alone: each fixable error derives from it and keeps its standard base
    (callers that catch ValueError or FileNotFoundError still do)."""
    from mimkit.config import ConfigError as from_config
    from mimkit.data.fashion_mnist import DataNotFoundError
    from mimkit.data.folder import FolderError
    from mimkit.data.webdataset import ShardError
    from mimkit.engine.checkpoint import CheckpointError
    from mimkit.errors import ConfigError, UserError
    from mimkit.interop.imports import ImportError_

    assert from_config is ConfigError
    for cls, base in (
        (ConfigError, ValueError),
        (DataNotFoundError, FileNotFoundError),
        (FolderError, ValueError),
        (ShardError, ValueError),
        (CheckpointError, RuntimeError),
        (ImportError_, ValueError),
    ):
        assert issubclass(cls, UserError) and issubclass(cls, base), cls
