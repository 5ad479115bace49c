"""Data-scaling studies: sweep grids (expansion, validation, the shipped sweep), running a tiny sweep (records,
skipping finished runs, resuming an interrupted one, the missing fine-tune, --dry-run, submitit's local executor),
power-law fits, and the analysis of a results table (over-fitting, saturation, loss vs accuracy, figures)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TINY, cli_error, run_cli, tiny_config
from mimkit.config import ConfigError, load_config
from mimkit.scaling.analyze import analyze_table, find_overfitting, summary_lines
from mimkit.scaling.fits import fit_power_law
from mimkit.scaling.grid import SweepRun, load_sweep
from mimkit.scaling.runner import pending_commands, run_status
from mimkit.scaling.sweep import run_sweep
from mimkit.scaling.table import aggregate, parse_number, read_table

# The fine-tune of the tiny sweep: 2 steps on the same synthetic 16 px images.
TINY_FINETUNE = [
    "device=cpu",
    "data.name=synthetic",
    "data.synthetic_size=128",
    "data.img_size=16",
    "data.in_chans=1",
    "train.epochs=null",
    "train.steps=2",
    "train.batch_size=16",
    "train.eval_every=2",
    "train.eval_samples=16",
    "train.tensorboard=false",
    "train.reconstruct=false",
]


def write_base(folder: Path) -> Path:
    """The TINY config (SimMIM) as a YAML file, the base of the test sweeps."""
    path = folder / "tiny_base.yaml"
    path.write_text(yaml.safe_dump(tiny_config("method.name=simmim").to_dict(), sort_keys=False))
    return path


def write_sweep(folder: Path, tree: dict, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------------ grid expansion
def test_grid_expands_to_the_cartesian_product(tmp_path):
    base = write_base(tmp_path)
    axes = {
        "model": ["mim_vit_femto", "mim_vit_pico"],
        "data": [0.25, 1.0],
        "steps": [4, 8, 12],
        "seed": [0, 1],
        "method.mask_ratio": [0.5, 0.75],
    }
    path = write_sweep(tmp_path, {"base": base.name, "set": {"train.eval_every": 4}, "grid": axes, "parallel": 3})
    sweep = load_sweep(path, tmp_path / "out")
    assert sweep.base == str(base)  # a relative base is found next to the sweep file
    assert sweep.parallel == 3 and sweep.finetune is None
    assert len(sweep.runs) == math.prod(len(v) for v in axes.values()) == 48
    assert len({run.run_dir for run in sweep.runs}) == 48
    assert len({run.run_id for run in sweep.runs}) == 48
    assert all(run.run_dir.parent == tmp_path / "out" / "runs" and run.finetune_dir is None for run in sweep.runs)
    columns = ["model", "data", "iterations", "seed", "method.mask_ratio"]
    assert all(list(run.axes) == columns for run in sweep.runs)
    labels = {tuple(run.axes.values()) for run in sweep.runs}
    assert labels == {tuple(str(v) for v in point) for point in itertools.product(*axes.values())}

    def find(**want):
        (run,) = [r for r in sweep.runs if all(r.axes[k.replace("__", ".")] == v for k, v in want.items())]
        return run

    run = find(model="mim_vit_pico", data="0.25", iterations="8", seed="1", method__mask_ratio="0.75")
    assert run.overrides[0] == "train.eval_every=4"  # the common `set` first, then the axes
    for item in ("model.name=mim_vit_pico", "data.fraction=0.25", "train.steps=8", "seed=1", "method.mask_ratio=0.75"):
        assert item in run.overrides
    cfg = load_config(sweep.base, run.overrides)
    assert (
        cfg.model.name,
        cfg.data.fraction,
        cfg.train.steps,
        cfg.seed,
        cfg.method.mask_ratio,
        cfg.train.eval_every,
    ) == ("mim_vit_pico", 0.25, 8, 1, 0.75, 4)
    other = find(model="mim_vit_femto", data="1.0", iterations="12", seed="0", method__mask_ratio="0.5")
    assert {"data.fraction=1.0", "train.steps=12", "model.name=mim_vit_femto", "method.mask_ratio=0.5"} <= set(
        other.overrides
    )
    assert "data.fraction=0.25" not in other.overrides
    (args,) = sweep.commands(other)
    assert args[:5] == ["pretrain", "--config", sweep.base, "--out", str(other.run_dir)]
    assert args[5::2] == ["--set"] * len(other.overrides) and args[6::2] == other.overrides


def test_grid_named_bundle_axis(tmp_path):
    base = write_base(tmp_path)
    grid = {
        "size": {
            "small": {"model.name": "mim_vit_femto", "model.decoder_dim": 32},
            "big": {"model.name": "mim_vit_pico", "model.decoder_dim": 64},
        },
        "data": [0.5],
    }
    sweep = load_sweep(write_sweep(tmp_path, {"base": str(base), "grid": grid}), tmp_path / "out")
    assert len(sweep.runs) == 2 and len({r.run_dir for r in sweep.runs}) == 2
    by_size = {run.axes["size"]: run for run in sweep.runs}
    assert set(by_size) == {"small", "big"}
    assert all(run.axes["data"] == "0.5" for run in sweep.runs)
    for label, bundle in grid["size"].items():
        run = by_size[label]
        assert {f"{k}={v}" for k, v in bundle.items()} | {"data.fraction=0.5"} <= set(run.overrides)
        cfg = load_config(sweep.base, run.overrides)
        assert (cfg.model.name, cfg.model.decoder_dim) == (bundle["model.name"], bundle["model.decoder_dim"])


@pytest.mark.parametrize(
    "change, needles",
    [
        ({"grdi": {"seed": [0]}}, ["unknown sweep key", "grdi"]),
        ({"grid": {"model": ["mim_vit_femto"], "train.stepz": [4]}}, ["run ", "train.stepz"]),
        ({"base": None}, ["'base'", "required"]),
        ({"grid": {"data": []}}, ["grid.data", "no values"]),
        ({"grid": {"data": {}}}, ["grid.data", "no values"]),
        ({"grid": {"data": [0.1, 0.5, 0.1]}}, ["grid.data", "repeated value"]),
        ({"grid": {}}, ["'grid'"]),
        ({"parallel": 0}, ["parallel", "0"]),
        ({"parallel": -2}, ["parallel", "-2"]),
        ({"parallel": "two"}, ["parallel", "two"]),
        ({"parallel": True}, ["parallel", "True"]),
        ({"parallel": 1.5}, ["parallel", "1.5"]),
        ({"finetune": {"config": "finetune_fmnist_tiny", "set": {"train.nope": 1}}}, ["finetune", "train.nope"]),
        ({"finetune": {"configs": "x"}}, ["finetune", "configs"]),
    ],
)
def test_sweep_file_errors_name_the_problem(tmp_path, change, needles):
    tree = {"base": str(write_base(tmp_path)), "grid": {"model": ["mim_vit_femto"], "steps": [4, 8]}}
    tree.update(change)
    if tree.get("base") is None:
        del tree["base"]
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(tmp_path, tree), tmp_path / "out")
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_invalid_value_in_one_grid_point_names_that_run(tmp_path):
    tree = {"base": str(write_base(tmp_path)), "grid": {"data": [0.5], "train.batch_size": [16, 0]}}
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(tmp_path, tree), tmp_path / "out")
    message = str(info.value)
    assert message.startswith("run ") and "batch_size0" in message.split(":")[0] and "train.batch_size" in message
    assert "batch_size16" not in message


def test_unknown_sweep_name_and_launcher(tmp_path):
    with pytest.raises(ConfigError, match="scaling_fmnist"):  # lists the shipped sweeps
        load_sweep("no_such_sweep", tmp_path)
    with pytest.raises(ConfigError, match="--launcher"):
        run_sweep("scaling_fmnist", str(tmp_path / "out"), launcher="cloud", say=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_shipped_sweep_loads_by_name(tmp_path):
    from mimkit.scaling.grid import SWEEPS_DIR

    tree = yaml.safe_load((SWEEPS_DIR / "scaling_fmnist.yaml").read_text())
    sweep = load_sweep("scaling_fmnist", tmp_path / "out")
    assert len(sweep.runs) == math.prod(len(v) for v in tree["grid"].values()) == 36
    assert [len({run.axes[c] for run in sweep.runs}) for c in ("model", "data", "iterations")] == [3, 4, 3]
    assert len({run.run_dir for run in sweep.runs}) == 36
    assert sweep.finetune is not None and sweep.finetune.config == tree["finetune"]["config"]
    for run in sweep.runs:
        assert run.finetune_dir == run.run_dir / "finetune"
        pretrain, finetune = sweep.commands(run)
        assert pretrain[0] == "pretrain" and finetune[:3] == ["finetune", "--init", str(run.run_dir)]
        assert finetune[finetune.index("--out") + 1] == str(run.finetune_dir)
        assert run_status(run) == "new"


def test_sweep_set_and_only_change_a_grid_from_the_command_line(tmp_path, capsys):
    """`sweep --set` adds overrides to every run after the file's own `set`, but never over a grid axis; `--only`
    keeps the runs whose directory matches a pattern (a smaller grid without a new file)."""
    base = write_base(tmp_path)
    grid = {"model": ["mim_vit_femto", "mim_vit_pico"], "steps": [4, 8], "seed": [0, 1]}
    path = write_sweep(tmp_path, {"base": base.name, "set": {"train.eval_every": 4}, "grid": grid})
    sweep = load_sweep(path, tmp_path / "out", ["train.eval_every=2", "method.mask_ratio=0.5"])
    for run in sweep.runs:
        assert run.overrides[:3] == ["train.eval_every=4", "train.eval_every=2", "method.mask_ratio=0.5"]
        cfg = load_config(sweep.base, run.overrides)
        assert (cfg.train.eval_every, cfg.method.mask_ratio) == (2, 0.5)
    with pytest.raises(ConfigError, match="train.steps is set by the grid's 'steps' axis.*--only"):
        load_sweep(path, tmp_path / "out", ["train.steps=100"])
    with pytest.raises(ConfigError, match="model.name is set by the grid's 'model' axis"):
        load_sweep(path, tmp_path / "out", ["model.name=mim_vit_tiny"])
    result = run_sweep(str(path), str(tmp_path / "out"), dry_run=True, only=["mim_vit_pico-*-seed0"], say=print)
    printed = capsys.readouterr().out
    assert result["runs"] == result["todo"] == 2
    assert "2 runs (of 8, --only mim_vit_pico-*-seed0)" in printed
    commands = [line for line in printed.splitlines() if line.startswith("mimkit pretrain")]
    assert len(commands) == 2 and all("mim_vit_pico-" in c and "seed0" in c for c in commands)
    with pytest.raises(ConfigError, match="--only vit_huge: matches none of the sweep's runs"):
        run_sweep(str(path), str(tmp_path / "out"), dry_run=True, only=["vit_huge"])


# ----------------------------------------------------------------------------------------- running a tiny sweep
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """Two runs (4 and 8 steps) of a femto SimMIM on synthetic images, each fine-tuned for 2 steps."""
    folder = tmp_path_factory.mktemp("sweep")
    write_base(folder)
    path = write_sweep(
        folder,
        {
            "base": "tiny_base.yaml",
            "grid": {"model": ["mim_vit_femto"], "data": [0.5], "steps": [4, 8], "seed": [0]},
            "parallel": 2,
            "finetune": {"config": "finetune_fmnist_tiny", "set": TINY_FINETUNE},
        },
    )
    out = folder / "out"
    messages: list[str] = []
    result = run_sweep(str(path), str(out), say=messages.append)
    return {"config": str(path), "out": out, "result": result, "messages": messages}


def test_sweep_records_every_run_and_skips_finished_ones(tiny_sweep):
    out, result = tiny_sweep["out"], tiny_sweep["result"]
    assert result["failed"] == [] and result["runs"] == result["done"] == 2, tiny_sweep["messages"]
    assert "2 new" in tiny_sweep["messages"][0]
    sweep = load_sweep(tiny_sweep["config"], out)
    assert all(run_status(run) == "done" for run in sweep.runs)
    rows = {row["run"]: row for row in read_csv(out / "results.csv")}
    assert set(rows) == {run.run_id for run in sweep.runs}
    batch = tiny_config().train.batch_size
    for run in sweep.runs:
        row = rows[run.run_id]
        results = json.loads((run.run_dir / "results.json").read_text())
        assert row["iterations"] == run.axes["iterations"] and int(row["iterations"]) == results["step"]
        assert int(row["params"]) > 0 and float(row["flops_per_image"]) > 0
        assert int(row["batch_size"]) == batch
        assert int(row["images_seen"]) == int(row["iterations"]) * batch
        assert float(row["compute"]) == pytest.approx(float(row["flops_per_image"]) * int(row["images_seen"]))
        assert 0 < int(row["data_images"]) < 128 and float(row["epochs"]) == pytest.approx(
            int(row["images_seen"]) / int(row["data_images"])
        )
        assert math.isfinite(float(row["heldout_loss"]))
        assert float(row["heldout_loss"]) == pytest.approx(results["final_heldout_loss"])
        assert math.isfinite(float(row["train_loss"]))
        assert 0 <= float(row["finetune_top1"]) <= 100
        assert (run.finetune_dir / "results.json").is_file()
    # same model and data: same size and per-image cost; the longer run costs twice the compute
    short, long = sorted(rows.values(), key=lambda r: int(r["iterations"]))
    assert short["params"] == long["params"] and short["flops_per_image"] == long["flops_per_image"]
    assert float(long["compute"]) == pytest.approx(2 * float(short["compute"]))
    curves = json.loads((out / "curves.json").read_text())
    assert set(curves) == set(rows)
    for run_id, curve in curves.items():
        steps = [step for step, _ in curve["heldout"]]
        assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == int(rows[run_id]["iterations"])
        assert all(math.isfinite(loss) for _, loss in curve["heldout"])
        assert curve["heldout"][-1][1] == pytest.approx(float(rows[run_id]["heldout_loss"]))
        assert curve["train_fixed"] and curve["train"]
    recorded = json.loads((out / "sweep.json").read_text())
    assert set(recorded["runs"]) == set(rows)

    # again: nothing is re-run, results.csv is rebuilt from the run directories
    stamps = {
        p: p.stat().st_mtime_ns
        for run in sweep.runs
        for p in (run.run_dir / "metrics.jsonl", run.run_dir / "results.json", run.finetune_dir / "results.json")
    }
    messages: list[str] = []
    again = run_sweep(tiny_sweep["config"], str(out), say=messages.append)
    assert again["done"] == 2 and again["failed"] == []
    assert "2 runs: 2 done, 0 to fine-tune, 0 to resume, 0 new" in messages[0]
    assert not any("finished in" in m for m in messages)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {row["run"]: row["heldout_loss"] for row in read_csv(out / "results.csv")} == {
        k: v["heldout_loss"] for k, v in rows.items()
    }

    # the sweep's own table goes through the analysis (one model, one data size: fits say why they are missing)
    analysis = analyze_table(out / "results.csv", out / "analysis")
    assert analysis["rows"] == analysis["cells"] == 2
    assert bool(analysis["overfit"]["rises"]) == bool(analysis["overfit"]["flagged"])
    assert all("note" in fit for fit in analysis["fits"]["data"])
    names = {Path(f).name for f in analysis["figures"]}
    assert "heldout_curves.png" in names and all(Path(f).stat().st_size > 0 for f in analysis["figures"])


def test_sweep_resumes_interrupted_run_and_adds_missing_finetune(tiny_sweep):
    config, out = tiny_sweep["config"], tiny_sweep["out"]
    sweep = load_sweep(config, out)
    runs = {run.axes["iterations"]: run for run in sweep.runs}
    short, long = runs["4"], runs["8"]
    before = json.loads((long.run_dir / "results.json").read_text())
    # interrupt the 8-step run after its step-4 checkpoint: no results.json, no step-8 checkpoint, no fine-tune
    (long.run_dir / "results.json").unlink()
    checkpoints = sorted((long.run_dir / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 2
    shutil.rmtree(checkpoints[-1])
    shutil.rmtree(long.finetune_dir)
    # the 4-step run is pretrained but was never fine-tuned (e.g. swept with --no-finetune first)
    shutil.rmtree(short.finetune_dir)
    short_stamp = (short.run_dir / "metrics.jsonl").stat().st_mtime_ns

    assert run_status(long) == "resume" and run_status(short) == "finetune"
    assert pending_commands(sweep, long) == sweep.commands(long)
    (only,) = pending_commands(sweep, short)
    assert only == sweep.commands(short)[1] and only[:3] == ["finetune", "--init", str(short.run_dir)]

    dry = run_cli("sweep", "--config", config, "--out", str(out), "--dry-run", check=True)
    assert "0 done, 1 to fine-tune, 1 to resume, 0 new" in dry.stdout
    lines = [shlex.split(line)[1:] for line in dry.stdout.splitlines() if line.startswith("mimkit ")]
    assert sorted(lines) == sorted([*sweep.commands(long), sweep.commands(short)[1]])
    assert [args[0] for args in lines].count("pretrain") == 1
    assert not (long.run_dir / "results.json").exists()  # a dry run runs nothing

    messages: list[str] = []
    result = run_sweep(config, str(out), say=messages.append)
    assert result["done"] == 2 and result["failed"] == [], messages
    assert "0 done, 1 to fine-tune, 1 to resume, 0 new" in messages[0]
    after = json.loads((long.run_dir / "results.json").read_text())
    assert after["step"] == before["step"] == 8
    log = Path(str(long.run_dir) + ".log").read_text()
    assert "resumed from step 4" in log
    # resuming from step 4 lands where the unbroken run did
    assert after["final_heldout_loss"] == pytest.approx(before["final_heldout_loss"], rel=1e-4)
    assert (short.finetune_dir / "results.json").is_file()
    assert (short.run_dir / "metrics.jsonl").stat().st_mtime_ns == short_stamp  # only the fine-tune ran again
    rows = read_csv(out / "results.csv")
    assert len(rows) == 2 and all(row["finetune_top1"] != "" for row in rows)
    assert all(run_status(run) == "done" for run in sweep.runs)


def test_run_resumed_at_its_last_step_still_records_its_final_loss(tmp_path):
    from mimkit.scaling.record import run_record
    from mimkit.training import pretrain

    cfg = tiny_config("method.name=simmim", "train.steps=2", "train.eval_every=2", "train.ckpt_every=2")
    run_dir = tmp_path / "run"
    first = pretrain(cfg, run_dir)
    (run_dir / "results.json").unlink()  # killed after the final checkpoint, before results.json
    assert run_status(SweepRun("run", {}, [], run_dir)) == "resume"
    again = pretrain(cfg, run_dir)
    assert again["step"] == 2
    row = run_record(run_dir, {"iterations": "2"})["row"]
    assert row["heldout_loss"] == pytest.approx(first["final_heldout_loss"])


def test_sweep_through_submitit_local_executor(tmp_path):
    pytest.importorskip("submitit")
    write_base(tmp_path)
    path = write_sweep(tmp_path, {"base": "tiny_base.yaml", "grid": {"steps": [2]}})
    out = tmp_path / "out"
    messages: list[str] = []
    result = run_sweep(str(path), str(out), launcher="submitit-local", say=messages.append)
    assert result["done"] == 1 and result["failed"] == [], messages
    (run,) = load_sweep(path, out).runs
    jobs = json.loads((out / "jobs.json").read_text())
    assert list(jobs) == [run.run_id]
    assert any(f"submitted job {jobs[run.run_id]}" in m for m in messages)
    (row,) = read_csv(out / "results.csv")
    assert row["run"] == run.run_id and int(row["iterations"]) == 2 and math.isfinite(float(row["heldout_loss"]))
    messages.clear()
    again = run_sweep(str(path), str(out), launcher="submitit-local", say=messages.append)
    assert again["done"] == 1 and not any("submitted job" in m for m in messages)
    assert json.loads((out / "jobs.json").read_text()) == jobs


# ------------------------------------------------------------------------------------------------------- fits
def test_fit_recovers_a_pure_power_law():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e6, 1e9, 8)
    a, alpha = 50.0, 0.3
    y = a * x**-alpha * (1 + 0.01 * rng.standard_normal(len(x)))
    for form in ("pure", "auto"):
        fit = fit_power_law(x, y, form=form)
        assert fit["form"] == "pure"
        assert fit["alpha"] == pytest.approx(alpha, rel=0.05)
        assert 0 < fit["alpha_err"] < 0.05 and fit["r2"] > 0.99 and fit["n"] == len(x)
        assert fit["x_next"] > x.max()
        assert fit["predicted_next"] == pytest.approx(a * fit["x_next"] ** -alpha, rel=0.03)
        assert fit["predicted_next_err"] > 0
    fit = fit_power_law(x, y, x_next=2e10)
    assert fit["x_next"] == 2e10 and fit["predicted_next"] == pytest.approx(a * 2e10**-alpha, rel=0.05)


def test_fit_recovers_a_saturating_power_law():
    rng = np.random.default_rng(1)
    x = np.geomspace(1e2, 1e6, 10)
    e, a, alpha = 1.5, 20.0, 0.4
    y = (e + a * x**-alpha) * (1 + 0.002 * rng.standard_normal(len(x)))
    for form in ("saturating", "auto"):
        fit = fit_power_law(x, y, form=form)
        assert fit["form"] == "saturating"
        assert fit["alpha"] == pytest.approx(alpha, rel=0.05)
        assert fit["E"] == pytest.approx(e, rel=0.05)
        assert fit["predicted_next"] == pytest.approx(e + a * fit["x_next"] ** -alpha, rel=0.02)
    # a straight line in log-log cannot describe it: the pure fit's exponent is far off
    assert abs(fit_power_law(x, y, form="pure")["alpha"] - alpha) > 0.05 * alpha


def test_fit_needs_three_distinct_x():
    with pytest.raises(ValueError, match="3 distinct"):
        fit_power_law([1.0, 1.0, 2.0, 2.0], [3.0, 3.1, 2.0, 2.1])
    with pytest.raises(ValueError, match="3 distinct"):
        fit_power_law([1.0, 2.0], [3.0, 2.0])
    with pytest.raises(ValueError, match="4 points"):
        fit_power_law([1.0, 2.0, 4.0], [3.0, 2.0, 1.5], form="saturating")


# --------------------------------------------------------------------------------------------------- analysis
MODELS = {"m_small": 1e6, "m_mid": 4e6, "m_large": 16e6}
DATA = {"10%": 0.1, "30%": 0.3, "100%": 1.0}
ITERATIONS = [100, 200, 400]
OVERFIT = ("m_mid", "10%")
RISE = 0.05


def law(params: float, data: float, iterations: float) -> float:
    return 0.5 + 1.0 * (params / 1e6) ** -0.3 + 0.4 * data**-0.5 + 0.3 * (iterations / 100) ** -0.5


def synthetic_table(path: Path) -> dict[tuple, float]:
    """model x data x iterations; held-out loss falls along every axis except for OVERFIT, whose loss rises from
    200 to 400 iterations. Fine-tune top-1 falls with loss. Returns (model, data, iterations) -> loss."""
    rng = np.random.default_rng(0)
    losses, rows = {}, []
    for (model, params), (data, fraction), iterations in itertools.product(MODELS.items(), DATA.items(), ITERATIONS):
        loss = law(params, fraction, iterations)
        if (model, data) == OVERFIT and iterations == 400:
            loss = law(params, fraction, 200) + RISE
        losses[(model, data, iterations)] = loss
        row = {
            "model": model,
            "params": f"{params / 1e6:g}M",
            "data": data,
            "iterations": iterations,
            "heldout_loss": loss,
            "train_loss": loss - 0.02 * iterations / 100,
            "finetune_top1": 95 - 20 * loss + 0.1 * rng.standard_normal(),
            "compute": 6 * params * iterations * 64,
            "seed": 0,
        }
        if (model, data, iterations) == ("m_small", "30%", 100):  # two seeds, averaged into one cell
            rows.append({**row, "heldout_loss": loss - 0.01, "seed": 0})
            row = {**row, "heldout_loss": loss + 0.01, "seed": 1}
        rows.append(row)
    rows.append(
        {"model": "m_small", "params": "1M", "data": "10%", "iterations": 800, "heldout_loss": "", "seed": 0}
    )  # an unfinished run: dropped
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return losses


def test_analysis_finds_overfitting_saturation_and_correlation(tmp_path):
    losses = synthetic_table(tmp_path / "results.csv")
    result = analyze_table(tmp_path / "results.csv", tmp_path / "analysis")
    n_cells = len(MODELS) * len(DATA) * len(ITERATIONS)
    assert result["cells"] == n_cells and result["rows"] == n_cells + 1
    assert result["data"] == list(DATA) and list(result["models"]) == list(MODELS)
    assert result["models"]["m_mid"] == MODELS["m_mid"]  # '4M' parsed

    (rise,) = result["overfit"]["rises"]
    model, data = OVERFIT
    assert (rise["model"], rise["data"], rise["short_iterations"], rise["long_iterations"]) == (model, data, 200, 400)
    assert rise["short_loss"] == pytest.approx(losses[(model, data, 200)])
    assert rise["long_loss"] == pytest.approx(losses[(model, data, 400)])
    assert rise["rise"] == pytest.approx(RISE)
    assert result["overfit"]["flagged"] == [[model, data, 400.0]]
    gap = next(g for g in result["overfit"]["gaps"] if (g["model"], g["data"], g["iterations"]) == (model, data, 400))
    assert gap["gap"] == pytest.approx(0.08)
    # a tolerance above the rise (relative) flags nothing
    points = aggregate(read_table(tmp_path / "results.csv"))
    assert find_overfitting(points, tolerance=RISE / losses[(model, data, 200)] * 1.5)["rises"] == []
    seeded = next(p for p in points if (p.model, p.data, p.iterations) == ("m_small", "30%", 100))
    assert seeded.n == 2 and seeded.heldout_loss == pytest.approx(losses[("m_small", "30%", 100)])
    assert seeded.heldout_std == pytest.approx(0.01 * 2**0.5)  # sample std of two seeds at +-0.01

    fits = result["fits"]
    assert fits["excluded_overfit"] == 1
    by_cell = {(f["data"], f["iterations"]): f for f in fits["params"]}
    assert by_cell[(data, 400)]["n"] == len(MODELS) - 1 and "alpha" not in by_cell[(data, 400)]
    assert by_cell[(data, 200)]["n"] == len(MODELS) and by_cell[(data, 200)]["alpha"] > 0
    by_model = {(f["model"], f["iterations"]): f for f in fits["data"]}
    assert by_model[(model, 400)]["n"] == len(DATA) - 1 and "alpha" not in by_model[(model, 400)]
    assert all(f["alpha"] > 0 for key, f in by_model.items() if key != (model, 400))
    frontier = fits["compute"]["frontier"]
    assert frontier and not any((c["model"], c["data"], c["iterations"]) == (model, data, 400) for c in frontier)
    assert [c["heldout_loss"] for c in frontier] == sorted((c["heldout_loss"] for c in frontier), reverse=True)

    saturation = result["saturation"]
    assert len(saturation) == len(MODELS) * len(ITERATIONS)
    for s in saturation:
        assert (s["data_from"], s["data_to"]) == ("30%", "100%")
        expected = losses[(s["model"], "100%", s["iterations"])] - losses[(s["model"], "30%", s["iterations"])]
        assert s["change"] == pytest.approx(expected) and s["change"] < 0
        assert s["relative_change"] == pytest.approx(expected / losses[(s["model"], "30%", s["iterations"])])

    corr = result["correlation"]
    assert corr["overall"]["n"] == n_cells
    assert corr["overall"]["pearson"] < -0.95 and corr["overall"]["spearman"] < -0.9
    assert all(c["pearson"] < -0.9 for c in corr["per_model"].values())

    saved = json.loads((tmp_path / "analysis/scaling.json").read_text())
    assert saved["overfit"]["flagged"] == result["overfit"]["flagged"]
    assert saved["fits"]["excluded_overfit"] == 1
    names = {Path(f).name for f in result["figures"]}
    assert {
        "loss_vs_data.png",
        "loss_vs_iterations.png",
        "loss_vs_params.png",
        "loss_vs_compute.png",
        "loss_vs_finetune.png",
        "train_heldout_gap.png",
    } <= names
    assert "heldout_curves.png" not in names  # no curves.json beside the table
    assert all(Path(f).is_file() and Path(f).stat().st_size > 1000 for f in result["figures"])
    summary = "\n".join(summary_lines(result))
    assert "1 (model, data) pair(s)" in summary and f"{model} on {data}" in summary


# ---------------------------------------------------------------------------------------------- table reading
def test_table_missing_columns_are_named(capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,params,data,iterations\nm,1M,10%,100\n")
    with pytest.raises(ConfigError) as info:
        read_table(bad)
    assert "'heldout_loss'" in str(info.value) and "'params'" not in str(info.value)
    worse = tmp_path / "worse.csv"
    worse.write_text("model,data,iterations\nm,10%,100\n")
    with pytest.raises(ConfigError) as info:
        read_table(worse)
    assert "'params'" in str(info.value) and "'heldout_loss'" in str(info.value)
    assert "'model'" not in str(info.value)
    assert "heldout_loss" in cli_error(capsys, "scaling", "analyze", str(bad), "--out", str(tmp_path / "analysis"))
    assert not (tmp_path / "analysis" / "scaling.json").exists()


def test_numbers_with_suffixes_and_percentages(tmp_path):
    assert parse_number("49M", "params", 2) == 49e6
    assert parse_number("125K", "params", 2) == 125e3
    assert parse_number("1.5B", "params", 2) == 1.5e9
    assert parse_number("10%", "data", 2) == pytest.approx(0.1)
    assert parse_number(" 3e2 ", "iterations", 2) == 300
    assert parse_number("", "finetune_top1", 2) is None
    with pytest.raises(ConfigError, match=r"line 7, column 'params'.*'lots'"):
        parse_number("lots", "params", 7)
    table = tmp_path / "t.csv"
    table.write_text(
        "model,params,data,iterations,heldout_loss,data_images\n"
        "vit_b,88M,10%,125K,0.5,\nvit_b,88M,IN-22K,125K,0.4,14.2M\n"
    )
    first, second = read_table(table)
    assert (first["params"], first["iterations"], first["data_size"]) == (88e6, 125e3, pytest.approx(0.1))
    assert second["data"] == "IN-22K" and second["data_size"] == pytest.approx(14.2e6)  # a name sized by data_images
    table.write_text("model,params,data,iterations,heldout_loss\nvit_b,big,10%,100,0.5\n")
    with pytest.raises(ConfigError, match=r"line 2, column 'params'"):
        read_table(table)


def test_table_rejects_surplus_cells_and_splits_extra_axes_into_variants(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,params,data,iterations,heldout_loss\nm,1M,10%,100,0.5,\n")
    with pytest.raises(ConfigError, match="line 2: 6 cells but the header has 5"):
        read_table(bad)
    table = tmp_path / "variants.csv"
    table.write_text(
        "model,params,data,iterations,heldout_loss,seed,method.mask_ratio\n"
        "m,1M,0.1,100,0.50,0,0.5\nm,1M,0.1,100,0.70,0,0.75\nm,1M,0.1,100,0.54,1,0.5\n"
    )
    points = {p.model: p for p in aggregate(read_table(table))}
    assert set(points) == {"m [method.mask_ratio=0.5]", "m [method.mask_ratio=0.75]"}
    assert points["m [method.mask_ratio=0.5]"].n == 2  # seeds are averaged, the other axis is not
    assert points["m [method.mask_ratio=0.5]"].heldout_loss == pytest.approx(0.52)
    assert points["m [method.mask_ratio=0.75]"].heldout_loss == pytest.approx(0.70)


def test_slurm_section_must_be_a_mapping(tmp_path):
    write_base(tmp_path)
    path = write_sweep(tmp_path, {"base": "tiny_base.yaml", "grid": {"steps": [2]}, "slurm": "gpu"})
    with pytest.raises(ConfigError, match="slurm: expected a mapping"):
        load_sweep(path, tmp_path / "out")


def test_training_flops_per_image_matches_the_vit_arithmetic():
    """Forward FLOPs of SimMIM on a femto ViT written out by hand (linears, attention, patch embedding, pixel head);
    a training step is forward + backward, about three forwards."""
    from mimkit.config import resolved
    from mimkit.scaling.record import training_flops_per_image

    cfg = resolved(tiny_config("method.name=simmim"))
    d, depth, tokens = cfg.model.embed_dim, cfg.model.depth, (16 // 4) ** 2 + 1
    linears = depth * 2 * tokens * (4 * d * d + 2 * d * 4 * d)  # qkv + proj, mlp fc1 + fc2
    attention = depth * 2 * 2 * tokens * tokens * d  # q k^T and attn v
    embed = 2 * (tokens - 1) * (4 * 4 * 1) * d
    head = 2 * (tokens - 1) * d * (4 * 4 * 1)
    forward = linears + attention + embed + head
    per_image = training_flops_per_image(cfg)
    assert 2.6 * forward < per_image < 3.05 * forward, (per_image, forward)


def test_compute_frontier_keeps_one_cell_per_compute_and_only_improvements():
    from mimkit.scaling.analyze import compute_frontier
    from mimkit.scaling.table import Point

    def cell(model, compute, loss):
        return Point(model, 1.0, "d", 1.0, compute, loss, extra={"compute": compute})

    cells = [
        cell("a", 10, 0.9),
        cell("b", 10, 0.8),
        cell("c", 20, 0.85),
        cell("d", 30, 0.7),
        cell("e", 30, 0.75),
        cell("f", 40, 0.72),
    ]
    assert [p.model for p in compute_frontier(cells)] == ["b", "d"]


@pytest.mark.parametrize(
    "name", ["scaling_fmnist", "scaling_fmnist_overfit", "scaling_fmnist_swin", "scaling_swinv2_in1k"]
)
def test_every_shipped_sweep_expands_and_validates(name, tmp_path):
    from mimkit.scaling.grid import sweep_names

    assert name in sweep_names()
    sweep = load_sweep(name, tmp_path / "out")  # every run's config is loaded and validated
    assert len({run.run_id for run in sweep.runs}) == len(sweep.runs) > 1
    assert all(cmd[0] == "pretrain" for run in sweep.runs for cmd in sweep.commands(run)[:1])


def test_auto_form_keeps_the_pure_law_at_four_points_and_forced_saturating_fits_or_says_why():
    rng = np.random.default_rng(3)
    x = np.array([1e5, 3e5, 1e6, 3e6])
    for _ in range(20):  # an exact power law with 1% noise: AICc never buys a third parameter at 4 points
        y = 2.0 * x**-0.1 * np.exp(rng.normal(0, 0.01, 4))
        assert fit_power_law(x, y, "auto")["form"] == "pure"
    forced = fit_power_law(x, 0.3 + 2.0 * x**-0.3, "saturating")
    assert forced["form"] == "saturating"


def test_a_stopping_sweep_starts_no_new_command(tmp_path):
    from mimkit.scaling.grid import TrainStep
    from mimkit.scaling.runner import execute

    stop = tmp_path / ".stopping"
    log = tmp_path / "run.log"
    step = TrainStep("pretrain", "mae_fmnist_tiny", tmp_path / "run", (*TINY, "train.steps=2"))
    assert execute([step], str(log), stop_file=str(stop))["ok"]  # no stop file: the training runs
    assert "$ mimkit pretrain --config mae_fmnist_tiny" in log.read_text()
    assert (tmp_path / "run" / "results.json").is_file()
    stop.touch()
    outcome = execute([step], str(tmp_path / "second.log"), stop_file=str(stop))
    assert not outcome["ok"] and outcome["returncode"] == 143 and "sweep stopped" in outcome["failed"]
    assert not (tmp_path / "second.log").exists() or "$ mimkit" not in (tmp_path / "second.log").read_text()


def test_a_sweep_step_reports_a_bad_config_in_one_line_and_stops_there(tmp_path):
    """The runner calls the training API, not the CLI: a config error is still exit code 2 and one line in the
    run's log, and the steps after it do not start."""
    from mimkit.scaling.grid import TrainStep
    from mimkit.scaling.runner import execute

    bad = TrainStep("pretrain", "mae_fmnist_tiny", tmp_path / "bad", (*TINY, "train.steps=0"))
    after = TrainStep("finetune", "finetune_fmnist_tiny", tmp_path / "ft", TINY, init=str(tmp_path / "bad"))
    outcome = execute([bad, after], str(tmp_path / "run.log"))
    assert not outcome["ok"] and outcome["returncode"] == 2
    assert outcome["failed"].startswith("mimkit pretrain --config mae_fmnist_tiny --out")
    text = (tmp_path / "run.log").read_text()
    assert "mimkit: error: train.steps: 0 must be positive" in text and "Traceback" not in text
    assert "$ mimkit finetune" not in text and not (tmp_path / "ft").exists()


def write_compare_summary(folder: Path, cells: list[tuple]) -> Path:
    """A `mimkit compare` summary.csv: (model, protocol, mean, std, n, baseline) rows, classification top-1."""
    folder.mkdir(parents=True)
    with open(folder / "summary.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "protocol", "task", "metric", "mean", "std", "n", "baseline"])
        for model, protocol, mean, std, n, baseline in cells:
            writer.writerow([model, protocol, "classification", "top1", mean, std, n, baseline])
        writer.writerow(["pixels", "linprobe", "localization", "mean_iou", 0.9, 0, 3, True])  # another task: ignored
    return folder


def test_results_table_shows_seed_spreads_scratch_and_the_baselines_that_learn_nothing(tmp_path):
    """results.md: per cell mean ± sample std over seeds; a fine-tuned cell not above the best baseline that learns
    nothing is marked †; the difference to the same architecture fine-tuned from scratch is ≈ when it is inside the
    larger seed spread (a one-seed cell judged by scratch's); each model's baselines are listed under its table."""
    header = ["model", "params", "data", "iterations", "heldout_loss", "train_loss", "finetune_top1", "seed"]
    runs = [  # (data, iterations, seed, loss, top1)
        ("0.1", 100, 0, 0.50, 80.0),
        ("0.1", 100, 1, 0.52, 82.0),  # mean 81.00 ± 1.41: under pixels' linear probe (83)
        ("0.1", 400, 0, 0.40, 88.0),
        ("0.1", 400, 1, 0.40, 88.2),  # mean 88.10 ± 0.14: +2.10 over scratch (86 ± 0.5)
        ("1.0", 400, 0, 0.38, 86.3),  # one seed, 86.3: +0.30, inside scratch's spread (0.5): ≈
        ("1.0", 100, 0, 0.45, 86.8),  # one seed, 86.8: +0.80, beyond it
    ]
    with open(tmp_path / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for data, iterations, seed, loss, top1 in runs:
            writer.writerow(["m", "1M", data, iterations, loss, loss - 0.01, top1, seed])
        writer.writerow(["other", "2M", "0.1", 100, 0.45, 0.44, 85.0, 0])  # a model without baselines
    base = write_compare_summary(
        tmp_path / "base-m",
        [
            ("scratch", "finetune", 86.0, 0.5, 3, False),
            ("scratch", "knn", 70.0, 0.0, 3, False),
            ("pixels", "knn", 81.0, 0.0, 3, True),
            ("pixels", "linprobe", 83.0, 0.2, 3, True),
            ("trivial", "trivial", 10.0, 0.0, 3, True),
        ],
    )
    result = analyze_table(tmp_path / "results.csv", tmp_path / "an", baselines=[f"m={base}"])
    table = (tmp_path / "an" / "results.md").read_text()
    assert "| 0.1 | 100 | 2 | 0.5100 ± 0.0141 | +0.0100 | 81.00 ± 1.41 † | -5.00 |" in table
    assert "| 0.1 | 400 | 2 | 0.4000 ± 0.0000 | +0.0100 | 88.10 ± 0.14 | +2.10 |" in table
    assert "| 1.0 | 400 | 1 | 0.3800 | +0.0100 | 86.30 | +0.30 ≈ |" in table  # judged by scratch's spread
    assert "| 1.0 | 100 | 1 | 0.4500 | +0.0100 | 86.80 | +0.80 |" in table
    assert "| random init | finetune | 86.00 ± 0.50 |" in table and "| *pixels* | linprobe | 83.00 ± 0.20 |" in table
    assert "mean_iou" not in table and "| 0.1 | 100 | 1 | 0.4500 | +0.0100 | 85.00 |  |" in table  # other: no bar
    assert "† fine-tuned top-1 not above" in table and "≈ the difference to scratch" in table
    assert {b["model"] for b in result["baselines"]["m"]} == {"scratch", "pixels", "trivial"}

    close = write_compare_summary(tmp_path / "base-close", [("scratch", "finetune", 87.9, 0.3, 3, False)])
    analyze_table(tmp_path / "results.csv", tmp_path / "an2", baselines=[f"m={close}"])
    assert "| 88.10 ± 0.14 | +0.20 ≈ |" in (tmp_path / "an2" / "results.md").read_text()  # inside 0.3


@pytest.mark.parametrize(
    "spec, make, needle",
    [
        ("nobody={dir}", True, "'nobody' is not a model of the table"),
        ("m", False, "expected MODEL=COMPARE_DIR"),
        ("m={dir}", False, "no compare summary at"),
        ("m={dir}", "pixels-only", "no model named 'scratch'"),
    ],
)
def test_scaling_baselines_errors_name_the_fix(tmp_path, capsys, spec, make, needle):
    with open(tmp_path / "results.csv", "w") as fh:
        fh.write("model,params,data,iterations,heldout_loss\nm,1M,0.1,100,0.5\n")
    folder = tmp_path / "base"
    if make:
        scratch = make is True
        write_compare_summary(folder, [("scratch" if scratch else "pixels", "knn", 80.0, 0.0, 1, not scratch)])
    args = ["scaling", "analyze", str(tmp_path / "results.csv"), "--out", str(tmp_path / "an")]
    err = cli_error(capsys, *args, "--baselines", spec.format(dir=folder))
    assert needle in err
