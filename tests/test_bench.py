"""`mimkit bench suite`: every workload's rows side by side, FLOPs that agree between implementations of the same
shape (so the references really are the same model), ratios and targets computed from the measured rows, and where
each row's time goes."""

from __future__ import annotations

import json

import pytest

from conftest import cli_error
from mimkit.bench.breakdown import KINDS
from mimkit.bench.suite import format_table, run_suite

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "suite"
    result = run_suite(
        "tiny",
        "cpu",
        steps=2,
        warmup=1,
        batch=4,
        rounds=2,
        breakdown_steps=2,
        out=out,
        trace_dir=out.parent / "traces",
        log=lambda *_: None,
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["suite", "traces"]  # nothing beside --out
    return result, json.loads((out / "results.json").read_text()), (out / "report.md").read_text()


def _rows(result):
    return {(r["group"], r["impl"]): r for r in result["rows"]}


def test_suite_times_every_workload_against_its_references(suite):
    result, written, _ = suite
    assert written["rows"] == result["rows"] and written["device"] and written["versions"]["torch"]
    assert set(_rows(result)) == {
        ("mae", "mimkit"),
        ("mae", "mimkit + input pipeline"),
        ("mae", "input pipeline alone"),
        ("mae", "HF ViTMAEForPreTraining"),
        ("mae", "official-style (timm Blocks)"),
        ("simmim", "mimkit"),
        ("simmim", "HF ViTForMaskedImageModeling"),
        ("simmim", "official-style (timm ViT)"),
        ("distill", "mimkit"),
        ("distill", "plain timm"),
        ("finetune", "mimkit"),
        ("finetune", "HF ViTForImageClassification"),
        ("finetune", "timm"),
        ("memory", "mimkit"),
        ("memory", "mimkit + activation checkpointing"),
    }
    for row in result["rows"]:
        assert row["img_per_s"] > 0 and row["batch"] == 4
        assert row["img_per_s"] == pytest.approx(1000 * 4 / row["step_ms"])
        if row["group"] != "memory":  # timed in two interleaved passes, the median (of two: the faster) reported
            slow, fast = row["spread"]
            assert slow <= row["img_per_s"] <= fast
        if row["flops_per_img"]:
            assert row["mfu"] == pytest.approx(row["flops_per_img"] * row["img_per_s"] / result["peak_flops"])


def test_same_shape_means_same_flops(suite):
    """The HF and official-style references are built to the mimkit config's shape: their counted FLOPs match the
    model's. mimkit executes fewer for MAE and SimMIM, whose last block runs at the masked tokens only."""
    rows = _rows(suite[0])
    flops = lambda group, impl: rows[(group, impl)]["flops_per_img"]  # noqa: E731
    model = lambda group, impl: rows[(group, impl)]["model_flops_per_img"]  # noqa: E731
    assert flops("mae", "HF ViTMAEForPreTraining") == pytest.approx(model("mae", "mimkit"), rel=1e-3)
    assert flops("mae", "official-style (timm Blocks)") == pytest.approx(model("mae", "mimkit"), rel=1e-3)
    assert flops("simmim", "official-style (timm ViT)") == pytest.approx(model("simmim", "mimkit"), rel=1e-3)
    assert flops("simmim", "HF ViTForMaskedImageModeling") == pytest.approx(model("simmim", "mimkit"), rel=0.02)
    assert flops("finetune", "timm") == pytest.approx(flops("finetune", "mimkit"), rel=1e-3)
    for group in ("mae", "simmim"):
        assert 0.8 * model(group, "mimkit") < flops(group, "mimkit") < 0.99 * model(group, "mimkit")
    for row in suite[0]["rows"]:
        if row["group"] in ("distill", "finetune"):
            assert row["model_flops_per_img"] == row["flops_per_img"]
    # checkpointing recomputes the forward: about one more forward pass (a third of forward + backward)
    ratio = flops("memory", "mimkit + activation checkpointing") / flops("memory", "mimkit")
    assert 1.15 < ratio < 1.45


def test_ratios_and_targets_come_from_the_rows(suite):
    result = suite[0]
    rows = _rows(result)
    speed = lambda group, impl: rows[(group, impl)]["img_per_s"]  # noqa: E731
    mae = result["ratios"]["mae"]
    assert mae["mimkit / HF ViTMAEForPreTraining"] == pytest.approx(
        speed("mae", "mimkit") / speed("mae", "HF ViTMAEForPreTraining")
    )
    assert mae["mimkit + input pipeline / HF ViTMAEForPreTraining"] == pytest.approx(
        speed("mae", "mimkit + input pipeline") / speed("mae", "HF ViTMAEForPreTraining")
    )
    assert not any("input pipeline alone" in key for key in mae)  # the loader row is no reference
    assert "memory" not in result["ratios"]
    cpu_targets = {t["what"]: t for t in result["targets"]}
    target = cpu_targets["mae: mimkit / HF ViTMAEForPreTraining"]
    assert target["need"] == 1.2 and target["met"] == (target["got"] >= 1.2)
    table = format_table(result)
    assert "official-style (timm Blocks)" in table and "MFU" in table and "target mae" in table


def test_markdown_report_beside_the_json_has_every_row_ratio_and_target(suite):
    result, _, markdown = suite
    lines = markdown.splitlines()
    assert result["device"] in lines[0] and result["date"] in lines[0]
    first = lines.index(next(line for line in lines if line.startswith("| ")))
    table = lines[first : lines.index("", first)]
    assert len(table) == 2 + len(result["rows"])  # header, rule and one line per row
    table = [table[0], *table[2:]]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[-1] == "spread img/s"  # timed in 2 rounds
    for line, row in zip(table[1:], result["rows"]):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(header)
        assert cells[:2] == [row["group"], row["impl"]] and cells[3] == f"{row['img_per_s']:,.0f}"
    target = result["targets"][0]
    assert f"- target {target['what']} >= {target['need']}: {target['got']:.2f}" in markdown


def test_every_model_row_says_where_its_time_goes(suite):
    result, _, markdown = suite
    profiled = [r for r in result["rows"] if r["kind"] in ("mimkit", "reference")]
    assert all(r["breakdown"] is None for r in result["rows"] if r["kind"] in ("loader", "pipeline"))
    for row in profiled:
        b = row["breakdown"]
        assert sum(b["shares"].values()) == pytest.approx(1.0) and sum(b["gap"].values()) == pytest.approx(1.0)
        assert b["shares"]["matmul"] > 0 and b["shares"]["attention"] > 0, row["impl"]
        # every counted FLOP of these ViTs is a matmul or attention; the breakdown's are the row's, per step
        assert sum(b["flops_per_step"].values()) == pytest.approx(row["flops_per_img"] * row["batch"])
        assert b["gap"]["useful"] == pytest.approx(
            sum(
                min(b["flops_per_step"].get(k, 0) / result["peak_flops"], b["seconds_per_step"].get(k, 0))
                for k in ("matmul", "attention")
            )
            / max(b["step_seconds"], sum(b["seconds_per_step"].values()))
        )
    lines = markdown.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| workload | implementation | matmul"))
    assert len(lines[first + 2 :]) == len(profiled)
    assert result["breakdown_figure"].endswith("suite/breakdown.png")
    from pathlib import Path

    assert Path(result["breakdown_figure"]).stat().st_size > 10_000
    assert "Where the time goes" in format_table(result)
    for row in profiled:  # the operators that took the most time, the largest first
        top = row["breakdown"]["top"]
        assert len(top) == 15 and [t[2] for t in top] == sorted((t[2] for t in top), reverse=True)
        # matmuls dominate these ViTs, but a preempted operator can outlast a few of them on a shared CPU
        assert {t[1] for t in top} <= set(KINDS) and "matmul" in [t[1] for t in top[:10]], top[:10]


def test_trace_dir_keeps_a_chrome_trace_per_mimkit_row(suite):
    import gzip
    from pathlib import Path

    traces = Path(suite[0]["written_to"]).parent.parent / "traces"
    mine = [r for r in suite[0]["rows"] if r["kind"] == "mimkit"]
    files = sorted(p.name for p in traces.iterdir())
    assert len(files) == len(mine) and "mae-mimkit.json.gz" in files  # no leftover windows, no references
    events = json.loads(gzip.decompress((traces / "mae-mimkit.json.gz").read_bytes()))["traceEvents"]
    assert any(e.get("name") == "aten::mm" for e in events)


def test_trace_dir_needs_the_profiler(capsys):
    err = cli_error(capsys, "bench", "suite", "--device", "cpu", "--breakdown-steps", "0", "--trace-dir", "t")
    assert "--trace-dir" in err and "--breakdown-steps" in err


def test_a_failing_profiler_keeps_the_timed_row(monkeypatch):
    import torch

    from mimkit.bench import suite as bench_suite
    from mimkit.bench.suite import Case, Timed, time_group

    def broken(*args, **kwargs):
        raise RuntimeError("CUPTI unavailable")

    monkeypatch.setattr(bench_suite, "profile_step", broken)
    case = Case("noop", "mimkit", lambda: Timed(lambda: None, None), note="a note")
    for rounds in (1, 2):
        (row,) = time_group("g", [case], 4, 2, 0, rounds, torch.device("cpu"), 1e9, breakdown_steps=2)
        assert row.img_per_s > 0 and row.breakdown is None
        assert row.note == "a note; breakdown failed: RuntimeError: CUPTI unavailable"


def test_rows_are_reported_as_soon_as_they_are_final():
    """On a GPU (one round) each row is reported before the next is built, so a run killed midway has printed the
    rows it finished; with rounds, after the last round."""
    import torch

    from mimkit.bench.suite import Case, Timed, time_group

    for rounds in (1, 2):
        seen, built = [], []

        def case(name):
            return Case(name, "mimkit", lambda: built.append(name) or Timed(lambda: None, None))

        def report(row):
            seen.append((row.impl, list(built)))

        time_group("g", [case("a"), case("b")], 4, 2, 0, rounds, torch.device("cpu"), 1e9, on_row=report)
        assert seen == ([("a", ["a"]), ("b", ["a", "b"])] if rounds == 1 else [("a", ["a", "b"]), ("b", ["a", "b"])])


def test_compile_modes_add_mimkit_rows(tmp_path):
    import torch

    from mimkit.bench.suite import suite_cases

    modes = ("reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    _, cases = suite_cases("tiny", "simmim", torch.device("cpu"), False, tmp_path, 4, modes)
    assert [c.impl for c in cases if c.kind == "mimkit"] == ["mimkit", *(f"mimkit compiled ({m})" for m in modes)]
    # no profiler on CUDA-graph replays (both modes that capture graphs)
    assert [c.profiled for c in cases if c.kind == "mimkit"] == [True, False, False, True]
    _, cases = suite_cases("tiny", "finetune", torch.device("cpu"), True, tmp_path, 4, ("reduce-overhead",))
    assert [c.impl for c in cases if c.kind == "mimkit"] == ["mimkit", "mimkit compiled"]


def test_suite_rejects_an_unknown_workload(capsys):
    assert "nonsense" in cli_error(capsys, "bench", "suite", "--only", "mae,nonsense", "--device", "cpu")


def test_device_name_reads_the_gpu_name(monkeypatch):
    """The CUDA branch runs only on a GPU machine: check it here with the name query stubbed."""
    import torch

    from mimkit.bench.suite import device_name

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_name(torch.device("cuda", 0)) == "NVIDIA H100 80GB HBM3"
    assert device_name(torch.device("cpu"))


def test_a_failing_case_is_reported_and_the_others_still_run(monkeypatch, tmp_path):
    """A row that cannot be built (an incompatible library version, out of memory) costs that row only: the suite
    logs it, lists it under `failed` in the JSON and the Markdown, and times the rest."""
    from mimkit.bench import references as refs

    def broken(cfg):
        raise RuntimeError("this transformers has no ViTMAEForPreTraining")

    monkeypatch.setattr(refs, "hf_mae", broken)
    out, lines = tmp_path / "suite", []
    result = run_suite(
        "tiny",
        "cpu",
        steps=1,
        warmup=0,
        batch=2,
        rounds=1,
        breakdown_steps=0,
        groups=["mae"],
        out=out,
        log=lines.append,
    )
    impls = {r["impl"] for r in result["rows"]}
    assert "HF ViTMAEForPreTraining" not in impls and {"mimkit", "official-style (timm Blocks)"} <= impls
    assert result["failed"] == [
        {
            "group": "mae",
            "impl": "HF ViTMAEForPreTraining",
            "error": "RuntimeError: this transformers has no ViTMAEForPreTraining",
        }
    ]
    assert any("HF ViTMAEForPreTraining" in line and "FAILED" in line for line in lines)
    assert "FAILED mae HF ViTMAEForPreTraining" in (out / "report.md").read_text()
    assert json.loads((out / "results.json").read_text())["failed"] == result["failed"]


def test_without_a_failure_handler_a_failing_case_raises():
    import torch

    from mimkit.bench.suite import Case, time_group

    def build():
        raise ValueError("bad case")

    for rounds in (1, 2):
        with pytest.raises(ValueError, match="bad case"):
            time_group("g", [Case("x", "mimkit", build)], 4, 1, 0, rounds, torch.device("cpu"), 1e9)


def test_compiled_rows_run_after_the_eager_ones(tmp_path):
    """A GPU run stopped at its time limit while compiling keeps every eager row and the compiled references."""
    import torch

    from mimkit.bench.suite import suite_cases

    _, cases = suite_cases("tiny", "mae", torch.device("cpu"), True, tmp_path, 4, ("reduce-overhead",))
    order = [c.impl for c in cases]
    compiled = [c.impl for c in cases if c.compiled]
    assert order[-len(compiled) :] == compiled and order[-1] == "mimkit + input pipeline"
    assert "official-style compiled" in compiled and "HF ViTMAEForPreTraining" not in compiled


def test_bench_pretrain_times_the_step_fed_by_the_input_pipeline(tmp_path):
    from mimkit.bench.pretrain_bench import run_pretrain_bench
    from mimkit.config import load_config

    cfg = load_config(
        "mae_fmnist_tiny",
        ["data.name=synthetic", "data.synthetic_size=64", "train.batch_size=8", "data.num_workers=0", "device=cpu"],
    )
    result = run_pretrain_bench(cfg, steps=2, warmup=1, breakdown_steps=0, pipeline=True, out=tmp_path / "b")
    assert result["pipeline"]["img_per_s"] > 0 and result["pipeline"]["data"]["name"] == "synthetic"
    assert result["ratio_pipeline_over_synthetic"] == pytest.approx(
        result["pipeline"]["img_per_s"] / result["mimkit"]["img_per_s"]
    )
    assert json.loads((tmp_path / "b" / "results.json").read_text())["ratio_pipeline_over_synthetic"] > 0


def test_profiler_logs_are_dropped_and_everything_else_kept(capfd):
    """libkineto writes to file descriptor 2 below Python: its markers go, any other line (a real error) stays."""
    import os
    import sys

    from mimkit.bench.breakdown import profiler_logs_dropped

    with profiler_logs_dropped():
        os.write(2, b"USDT:2026-12-05 05:58:52 27589:27589 SyncActivityProfilerHandler.cpp:39] profiler_start\n")
        os.write(2, b"ERROR:2026-12-05 05:58:53 27589:27589 DeviceProperties.cpp:56] gpuGetDeviceCount failed\n")
        os.write(2, b"ERROR: something that matters\n")
        print("from python", file=sys.stderr)
    err = capfd.readouterr().err
    assert sorted(err.splitlines()) == ["ERROR: something that matters", "from python"]


def test_flop_rates_keep_their_digits():
    from mimkit.bench.flops import flop_rate

    assert flop_rate(9.5e10) == "95 GFLOP/s"  # a 2-core CPU: not '0.1 TFLOP/s'
    assert flop_rate(7.89e14) == "789 TFLOP/s" and flop_rate(2.5e15) == "2.5 PFLOP/s"
