"""`mimkit scaling kept`: a pretraining run's kept checkpoints, scored by a compare, as a scaling results table
(held-out loss at each checkpoint's step against its transfer score), read back by `scaling analyze`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import cli_error, tiny_config
from mimkit.config import ConfigError
from mimkit.scaling.analyze import analyze_table
from mimkit.scaling.kept import kept_records, kept_step, parse_run_spec
from mimkit.scaling.record import write_results
from mimkit.scaling.table import aggregate, read_table

COMPARE_COLUMNS = ["model", "source", "protocol", "task", "seed", "baseline", "metric", "value", "top1", "top5"]


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory) -> Path:
    """A tiny SimMIM run of 6 steps, evaluated every 2 steps, keeping every 3rd step's checkpoint (3 and 6): step 3
    has no evaluation of its own, so its held-out loss is the one measured at step 2."""
    from mimkit.training import pretrain

    run_dir = tmp_path_factory.mktemp("kept") / "pre" / "simmim"
    cfg = tiny_config(
        "method.name=simmim", "train.steps=6", "train.eval_every=2", "train.keep_every=3", "train.keep_last=1"
    )
    pretrain(cfg, run_dir)
    return run_dir


def heldout_at(run_dir: Path, step: int) -> float:
    """The fixed-mask held-out loss metrics.jsonl records at `step`, read line by line."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "eval" and record.get("split") == "heldout" and record["step"] == step:
            return record["loss"]
    raise AssertionError(f"no held-out evaluation at step {step}")


def elsewhere_of(run_dir: Path, step: int = 3) -> str:
    """Step `step` of `run_dir` as another machine's compare recorded it: another root, the run's last three names."""
    return f"/elsewhere/{run_dir.parent.parent.name}/pre/simmim/checkpoints/step-{step:07d}"


def write_compare(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COMPARE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({"task": "classification", "baseline": "False", "metric": "top1", "top5": "", **row})
    return folder


def score(model: str, source: str, top1: float, seed: int = 0, protocol: str = "finetune", **extra) -> dict:
    return {"model": model, "source": source, "protocol": protocol, "seed": seed, "value": top1, "top1": top1, **extra}


def test_each_kept_checkpoint_gets_its_step_s_heldout_loss_and_its_mean_transfer_score(kept_run, tmp_path):
    ckpts = kept_run / "checkpoints"
    assert {"step-0000003", "step-0000006"} <= {p.name for p in ckpts.glob("step-*")}  # (and the best one)
    # step 3 compared from another machine (same run folder names, other root), step 6 under the run's final name
    elsewhere = elsewhere_of(kept_run)
    compare = write_compare(
        tmp_path / "compare",
        [
            score("early", elsewhere, 70.0, seed=0),
            score("early", elsewhere, 74.0, seed=1),
            score("early", elsewhere, 99.0, protocol="knn"),  # another protocol: not this table's
            score("final", str(tmp_path / "final.safetensors"), 80.0),
            score("pixels", "raw pixels", 90.0, baseline="True"),
            score("other", "/x/pre-s1/simmim/checkpoints/step-0000003", 60.0),  # another run's checkpoint
        ],
    )
    records = kept_records(kept_run, compare, final="final")
    rows = [r["row"] for r in records]
    assert [(r["run"], r["iterations"]) for r in rows] == [("early", 3), ("final", 6)]
    assert [r["heldout_step"] for r in records] == [2, 6]  # step 3 was not evaluated: the last evaluation before
    assert rows[0]["heldout_loss"] == pytest.approx(heldout_at(kept_run, 2))
    assert rows[1]["heldout_loss"] == pytest.approx(heldout_at(kept_run, 6))
    assert rows[0]["finetune_top1"] == pytest.approx(72.0) and rows[1]["finetune_top1"] == pytest.approx(80.0)
    assert rows[0]["images_seen"] == 3 * 16 and rows[0]["model"] == "mim_vit_femto" and rows[0]["method"] == "simmim"
    assert records[0]["curves"] is None and [s for s, _ in records[1]["curves"]["heldout"]] == [0, 2, 4, 6]

    out = tmp_path / "table"
    write_results(records, out)
    table = read_table(out / "results.csv")
    assert [(r["model"], r["iterations"]) for r in table] == [("mim_vit_femto", 3), ("mim_vit_femto", 6)]
    assert list(json.loads((out / "curves.json").read_text())) == ["final"]
    result = analyze_table(out / "results.csv", tmp_path / "analysis")
    assert result["correlation"]["overall"]["n"] == 2  # too few for a correlation, counted all the same
    assert result["transfer"] == "fine-tuned top-1"

    probe = kept_records(kept_run, compare, protocol="knn")  # early's kNN score, labelled as such in the analysis
    assert [r["row"]["finetune_top1"] for r in probe] == [99.0]
    write_results(probe, tmp_path / "knn")
    result = analyze_table(tmp_path / "knn" / "results.csv", tmp_path / "knn" / "analysis")
    assert result["transfer"] == "kNN top-1"
    assert "| kNN top-1 |" in (tmp_path / "knn" / "analysis" / "results.md").read_text()


def test_kept_step_only_takes_this_run_s_checkpoint_folders(tmp_path):
    run = tmp_path / "a" / "study" / "pre" / "mae"
    (run / "checkpoints" / "step-0000010").mkdir(parents=True)
    assert kept_step(str(run / "checkpoints" / "step-0000010"), run) == 10
    assert kept_step("/other/study/pre/mae/checkpoints/step-0000020", run) == 20  # not here: by the three names
    assert kept_step("/other/transfer/pre/mae/checkpoints/step-0000020", run) is None  # another study's pre/mae
    assert kept_step("/other/study/pre-s1/mae/checkpoints/step-0000020", run) is None
    twin = tmp_path / "b" / "study" / "pre" / "mae" / "checkpoints" / "step-0000010"
    twin.mkdir(parents=True)
    assert kept_step(str(twin), run) is None  # it exists here, as another folder: not this run's
    assert kept_step(str(run / "checkpoints" / "last"), run) is None
    assert kept_step("/other/study/pre/mae/step-0000020", run) is None
    assert parse_run_spec("runs/a=mae_ep100") == (Path("runs/a"), "mae_ep100") and parse_run_spec("r") == (
        Path("r"),
        None,
    )
    with pytest.raises(ConfigError, match="final encoder"):
        parse_run_spec("runs/a=")


def test_kept_errors_name_the_fix(kept_run, tmp_path, capsys):
    compare = write_compare(tmp_path / "compare", [score("final", "/x/final.safetensors", 80.0)])
    with pytest.raises(ConfigError, match=r"no finetune score .* comes from"):
        kept_records(kept_run, compare)
    with pytest.raises(ConfigError, match=r"'nope' has no finetune score .*models there: final"):
        kept_records(kept_run, compare, final="nope")
    with pytest.raises(ConfigError, match="mimkit compare"):
        kept_records(kept_run, tmp_path / "missing")
    with pytest.raises(ConfigError, match="pretraining run directory"):
        kept_records(tmp_path, compare)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        (unfinished / name).write_text((kept_run / name).read_text())
    with pytest.raises(ConfigError, match="has not ended"):
        kept_records(unfinished, compare, final="final")
    err = cli_error(
        capsys, "scaling", "kept", f"{kept_run}=nope", "--compare", str(compare), "--out", str(tmp_path / "o")
    )
    assert "'nope'" in err


def test_cli_writes_the_table_and_merge_keeps_rows_of_runs_no_longer_on_disk(kept_run, tmp_path, capsys):
    from mimkit.cli import main

    compare = write_compare(tmp_path / "compare", [score("final", "/x/final.safetensors", 80.0)])
    out = tmp_path / "table"
    args = ["scaling", "kept", f"{kept_run}=final", "--compare", str(compare), "--out", str(out)]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "final: step 6, held-out loss" in said and "finetune top-1 80.00" in said
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    gone = {**rows[0], "run": "gone_ep50", "iterations": "3", "heldout_loss": "0.5", "run_dir": "runs/lost/pre/mae"}
    renamed = {**rows[0], "run": "old_name_ep6"}  # this run's row under a name the comparison no longer has
    with open(out / "results.csv", "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(rows[0])).writerows([gone, renamed])
    curves = json.loads((out / "curves.json").read_text())
    (out / "curves.json").write_text(json.dumps({**curves, "gone_ep50": {"heldout": [[0, 1.0]]}}))

    assert main([*args, "--merge"]) == 0
    assert "1 rows and 1 kept from the table there" in capsys.readouterr().out
    with open(out / "results.csv", newline="") as fh:
        assert [r["run"] for r in csv.DictReader(fh)] == ["gone_ep50", "final"]  # final replaced, not doubled
    assert json.loads((out / "curves.json").read_text())["gone_ep50"] == {"heldout": [[0, 1.0]]}  # its curve kept
    knn = write_compare(tmp_path / "knn", [score("final", "/x/final.safetensors", 60.0, protocol="knn")])
    mixed = ["scaling", "kept", f"{kept_run}=final", "--compare", str(knn), "--out", str(out), "--protocol", "knn"]
    assert "holds finetune scores, these rows knn" in cli_error(capsys, *mixed, "--merge")
    assert main(args) == 0  # without --merge the table is these runs' alone
    with open(out / "results.csv", newline="") as fh:
        assert [r["run"] for r in csv.DictReader(fh)] == ["final"]


def test_a_table_mixing_transfer_protocols_keeps_them_apart(kept_run, tmp_path):
    from mimkit.scaling.table import transfer_label, transfer_protocol

    elsewhere = elsewhere_of(kept_run)
    compare = write_compare(
        tmp_path / "c", [score("early", elsewhere, 70.0), score("early", elsewhere, 60.0, protocol="knn")]
    )
    finetune, knn = kept_records(kept_run, compare), kept_records(kept_run, compare, protocol="knn")
    knn[0]["row"]["run"] = "early_knn"
    write_results(finetune + knn, tmp_path / "mixed")
    rows = read_table(tmp_path / "mixed" / "results.csv")
    assert [r["model"] for r in rows] == [
        "mim_vit_femto [transfer_protocol=finetune]",
        "mim_vit_femto [transfer_protocol=knn]",
    ]
    assert transfer_protocol(rows) == "mixed" and transfer_label("mixed") == "transfer top-1"
    assert transfer_protocol([{"cells": {}}]) == "finetune"  # a sweep's table: fine-tuned
    assert transfer_label("finetune") == "fine-tuned top-1" and transfer_label("linprobe") == "linear-probe top-1"


def write_compare_summary(folder: Path, cells: list[tuple[str, str, float, bool]]) -> Path:
    """A compare's summary.csv: (model, protocol, mean top-1, baseline) rows, std 0.5 over 3 seeds."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "summary.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "protocol", "task", "metric", "mean", "std", "n", "baseline"])
        for model, protocol, mean, baseline in cells:
            writer.writerow([model, protocol, "classification", "top1", mean, 0.5, 3, baseline])
    return folder


def test_a_frozen_probe_table_is_read_against_the_same_protocol_s_baselines(kept_run, tmp_path):
    """A kept table of linear-probe scores: its † bar is the pixels' linear probe (not their kNN, not the best of
    all baselines as for fine-tuning), its 'vs scratch' the random network's linear probe; the comparison's other
    models are not listed as baselines; the figure draws the bar and scratch."""
    from mimkit.scaling.baselines import bars, learns_nothing_bar, read_compare_summary

    elsewhere = elsewhere_of(kept_run)
    compare = write_compare(tmp_path / "c", [score("early", elsewhere, 80.0, protocol="linprobe")])
    summary = [
        ("pixels", "linprobe", 82.0, True),
        ("pixels", "knn", 85.0, True),
        ("majority", "trivial", 10.0, True),
        ("scratch", "linprobe", 79.0, False),
        ("scratch", "finetune", 89.0, False),
        ("other_encoder", "linprobe", 70.0, False),
    ]
    write_compare_summary(compare, summary)
    cells = read_compare_summary(compare)
    assert learns_nothing_bar(cells, "linprobe") == 82.0 and learns_nothing_bar(cells, "knn") == 85.0
    assert learns_nothing_bar(cells) == 85.0  # fine-tuning can learn any of them
    assert bars({"m": cells}, "linprobe") == {"m": {"learns_nothing": 82.0, "scratch": 79.0}}

    write_results(kept_records(kept_run, compare, protocol="linprobe"), tmp_path / "t")
    result = analyze_table(tmp_path / "t" / "results.csv", tmp_path / "a", baselines=[f"mim_vit_femto={compare}"])
    assert result["bars"] == {"mim_vit_femto": {"learns_nothing": 82.0, "scratch": 79.0}}
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| 80.00 † | +1.00 |" in table  # under the pixels' probe (82), one point above scratch's probe (79)
    assert "other_encoder" not in table and "| random init | linprobe |" in table
    assert (tmp_path / "a" / "loss_vs_finetune.png").is_file()


def test_two_models_on_one_step_are_refused_and_the_evaluation_window_is_bounded(kept_run, tmp_path):
    ckpt = str(kept_run / "checkpoints" / "step-0000003")
    twice = write_compare(tmp_path / "twice", [score("a", ckpt, 70.0), score("b", elsewhere_of(kept_run), 71.0)])
    with pytest.raises(ConfigError, match=r"'a' and 'b' .* both step 3"):
        kept_records(kept_run, twice)
    records = [json.loads(line) for line in (kept_run / "metrics.jsonl").read_text().splitlines()]
    from mimkit.scaling.kept import eval_before

    assert eval_before(records, "heldout", 3, within=1) == (2, pytest.approx(heldout_at(kept_run, 2)))
    assert eval_before(records, "heldout", 4, within=1) == (4, pytest.approx(heldout_at(kept_run, 4)))
    assert eval_before(records, "heldout", 3, within=0) is None  # step 2 is 1 step back: outside a window of 0
    assert eval_before(records, "heldout", 6, within=1) == (6, pytest.approx(heldout_at(kept_run, 6)))  # not 4


def test_a_row_carries_its_transfer_seeds_spread_into_the_cell(kept_run, tmp_path):
    scores = [score("early", elsewhere_of(kept_run), v, seed=i) for i, v in enumerate((70.0, 72.0, 77.0))]
    compare = write_compare(tmp_path / "c", scores)
    write_results(kept_records(kept_run, compare), tmp_path / "t")
    (cell,) = aggregate(read_table(tmp_path / "t" / "results.csv"))
    assert cell.get("finetune_top1") == pytest.approx(73.0)
    assert cell.get("finetune_std") == pytest.approx(3.605551, abs=1e-5) and cell.get("finetune_n") == 3


def test_few_points_get_exact_permutation_p_values():
    """Four checkpoints: scipy's asymptotic p for a perfect Spearman is 0, the exact one 2/24; each p is checked
    against a loop over all 24 orderings with scipy's own statistics."""
    import itertools

    from scipy.stats import pearsonr, spearmanr

    from mimkit.scaling.analyze import exact_correlation_p, loss_accuracy_correlation
    from mimkit.scaling.table import Point

    loss, top1 = [0.4338, 0.3960, 0.3825, 0.3805], [83.60, 84.39, 84.57, 84.56]
    exact = exact_correlation_p(loss, top1)
    for name, stat in (("pearson_p", pearsonr), ("spearman_p", spearmanr)):
        observed = abs(stat(loss, top1).statistic)
        orderings = list(itertools.permutations(top1))
        hits = sum(abs(stat(loss, list(o)).statistic) >= observed - 1e-12 for o in orderings)
        assert exact[name] == pytest.approx(hits / len(orderings))
    assert exact["spearman_p"] == pytest.approx(8 / 24)  # rho -0.8: 3 orderings each side, and the 2 perfect ones

    points = [
        Point("m", 1.0, "1", 1.0, float(i), a, extra={"finetune_top1": b}) for i, (a, b) in enumerate(zip(loss, top1))
    ]
    corr = loss_accuracy_correlation(points)["overall"]
    assert corr["p_method"] == "exact: all 24 orderings" and corr["spearman_p"] == pytest.approx(8 / 24)
    perfect = exact_correlation_p([1, 2, 3, 4], [4, 3, 2, 1])
    assert perfect == {"pearson_p": pytest.approx(2 / 24), "spearman_p": pytest.approx(2 / 24)}
