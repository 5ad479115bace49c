"""`compare --contrast A:B` (eval/contrasts.py): the difference of two models paired by evaluation seed, its paired
t-test against scipy's own, and the verdict by the comparison's rule (no finding inside the larger seed spread; the
direction follows the task's metric); the table and contrasts.csv through --tables-only; clear errors."""

from __future__ import annotations

import csv
import json

import pytest
from scipy import stats

from conftest import cli_error
from mimkit.config import ConfigError
from mimkit.eval.contrasts import contrast_rows, contrasts_markdown, parse_contrasts


def rows_of(model: str, values: list[float], task: str = "classification", protocol: str = "finetune") -> list[dict]:
    metric = {"classification": "top1", "depth": "depth_error"}[task]
    return [
        dict(model=model, protocol=protocol, task=task, seed=s, baseline=False, metric=metric, value=v)
        for s, v in enumerate(values)
    ]


def test_a_paired_difference_beyond_the_spread_is_a_finding_with_scipys_paired_p():
    a, b = [90.0, 91.0, 92.0], [88.0, 88.5, 89.5]
    (row,) = contrast_rows(rows_of("qkvv", a) + rows_of("cls", b), [("qkvv", "cls")])
    diffs = [x - y for x, y in zip(a, b)]
    assert row["delta"] == pytest.approx(sum(diffs) / 3) and row["n"] == 3
    assert row["delta_std"] == pytest.approx(stats.tstd(diffs))
    assert row["a_std"] == pytest.approx(1.0) and row["b_std"] == pytest.approx(stats.tstd(b))
    assert row["p_paired_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
    assert row["verdict"] == "qkvv better"
    (flipped,) = contrast_rows(rows_of("qkvv", a) + rows_of("cls", b), [("cls", "qkvv")])
    assert flipped["delta"] == pytest.approx(-row["delta"]) and flipped["verdict"] == "qkvv better"


def test_a_difference_inside_the_larger_spread_is_not_a_finding_even_with_a_small_paired_p():
    # every seed favours a by 1.0 (paired p tiny), but each model's own spread is 2.0: the rule says no finding
    a, b = [90.0, 92.0, 94.0], [89.0, 91.0, 92.9]
    (row,) = contrast_rows(rows_of("a", a) + rows_of("b", b), [("a", "b")])
    assert row["delta"] < row["a_std"] and row["p_paired_t"] < 0.01
    assert row["verdict"].startswith("≈ within the seed spread")


def test_the_verdict_follows_the_metric_direction_and_one_seed_gives_none():
    lower_is_better = rows_of("mim", [0.10, 0.11, 0.12], "depth") + rows_of("sup", [0.20, 0.21, 0.23], "depth")
    (row,) = contrast_rows(lower_is_better, [("mim", "sup")])
    assert row["delta"] < 0 and row["verdict"] == "mim better"
    (single,) = contrast_rows(rows_of("a", [90.0]) + rows_of("b", [80.0]), [("a", "b")])
    assert single["verdict"] == "one common seed: no verdict" and single["p_paired_t"] is None


def test_a_lead_beyond_the_spread_that_the_t_test_does_not_support_is_not_a_finding():
    """+2.5 is beyond both spreads (1.41, 0.71), but the seeds disagree on its size (+2, +3): paired t p 0.13. Either
    test alone lets noise through with few seeds, so the verdict needs both."""
    (row,) = contrast_rows(rows_of("a", [88.0, 90.0]) + rows_of("b", [86.0, 87.0]), [("a", "b")])
    assert row["delta"] > max(row["a_std"], row["b_std"]) and row["p_paired_t"] == pytest.approx(0.1257, abs=1e-3)
    assert row["verdict"] == "≈ beyond the seed spread but p 0.13 >= 0.05: not a finding"
    assert row["p_paired_t"] == pytest.approx(stats.ttest_rel([88.0, 90.0], [86.0, 87.0]).pvalue)


def test_only_the_common_seeds_count_for_means_spreads_and_the_difference():
    a = rows_of("a", [88.0, 90.0, 80.0])  # seed 2 (much lower) has no partner in b
    b = rows_of("b", [86.0, 87.9])
    (row,) = contrast_rows(a + b, [("a", "b")])
    assert row["n"] == 2 and row["a_mean"] == pytest.approx(89.0) and row["b_mean"] == pytest.approx(86.95)
    assert row["delta"] == pytest.approx(row["a_mean"] - row["b_mean"]) and row["delta"] == pytest.approx(2.05)
    assert row["a_std"] == pytest.approx(stats.tstd([88.0, 90.0])) and row["verdict"] == "a better"
    assert row["p_paired_t"] == pytest.approx(stats.ttest_rel([88.0, 90.0], [86.0, 87.9]).pvalue)
    disjoint = rows_of("a", [1.0, 2.0]) + [{**r, "seed": r["seed"] + 2} for r in rows_of("b", [1.0, 2.0])]
    (none,) = contrast_rows(disjoint, [("a", "b")])
    assert none["n"] == 0 and none["delta"] is None and none["verdict"] == "no common seeds: no verdict"
    assert "| a vs b | classification | finetune |  |  |  | 0 |  | no common seeds" in contrasts_markdown([none])


def test_no_verdict_without_any_seed_spread_and_p_at_its_limits():
    # the same number on every seed (e.g. kNN on all the data): a 0.01 gap is not a finding
    (same,) = contrast_rows(rows_of("a", [90.0] * 3) + rows_of("b", [89.99] * 3), [("a", "b")])
    assert same["verdict"].startswith("no seed spread") and same["p_paired_t"] == 0.0
    # the same lead on every seed: ttest_rel's limit p = 0, but each model's own spread (1.0) swallows the lead
    (steady,) = contrast_rows(rows_of("a", [90.0, 91.0, 92.0]) + rows_of("b", [89.0, 90.0, 91.0]), [("a", "b")])
    assert steady["p_paired_t"] == 0.0 and steady["verdict"].startswith("≈")
    (equal,) = contrast_rows(rows_of("a", [90.0, 91.0]) + rows_of("b", [90.0, 91.0]), [("a", "b")])
    assert equal["p_paired_t"] == 1.0 and equal["verdict"].startswith("≈")


def test_a_seed_without_a_number_gives_no_verdict_for_either_model():
    for a, b in (([90.0, float("nan"), 92.0], [88.0, 88.5, 89.5]), ([90.0, 91.0, 92.0], [88.0, float("nan"), 89.5])):
        (row,) = contrast_rows([*rows_of("a", a), *rows_of("b", b)], [("a", "b")])
        assert row["verdict"] == "not a number on some seed: no verdict"


def test_only_columns_both_models_were_measured_in_are_contrasted():
    rows = rows_of("a", [1.0, 2.0]) + rows_of("b", [1.0, 2.0]) + rows_of("a", [5.0, 6.0], protocol="knn")
    assert [(r["task"], r["protocol"]) for r in contrast_rows(rows, [("a", "b")])] == [("classification", "finetune")]
    assert contrast_rows(rows, [("a", "c")]) == []  # not measured yet (a comparison still running)


@pytest.mark.parametrize("spec", ["qkvv", "qkvv:", ":cls", "qkvv:qkvv", "a:b:c"])
def test_a_malformed_contrast_is_refused(spec):
    with pytest.raises(ConfigError, match="give two different model names as A:B"):
        parse_contrasts([spec])


def test_tables_only_adds_the_contrasts_and_refuses_an_unknown_name(tmp_path, capsys):
    from mimkit.cli import main

    cells = tmp_path / "cmp" / "cells"
    for row in [*rows_of("qkvv", [90.0, 91.0, 92.0]), *rows_of("cls", [88.0, 88.5, 89.5])]:
        name = f"{row['model']}__finetune__classification__seed{row['seed']}"
        (cells / name).mkdir(parents=True)
        (cells / name / "cell.json").write_text(json.dumps({"config_hash": "x", "row": {**row, "source": ""}}))
    out = str(tmp_path / "cmp")
    assert main(["compare", "--out", out, "--tables-only", "--contrast", "qkvv:cls"]) == 0
    table = (tmp_path / "cmp/results.md").read_text()
    assert "# Contrasts (differences paired by evaluation seed)" in table
    assert "| qkvv vs cls | classification | finetune | 91.00 ± 1.00 | 88.67 ± 0.76 | 2.33 ± 0.29 | 3 |" in table
    assert "| qkvv better |" in table
    with open(tmp_path / "cmp/contrasts.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["a"] == "qkvv" and row["verdict"] == "qkvv better" and float(row["delta"]) == pytest.approx(7 / 3)
    assert (tmp_path / "cmp/contrasts.png").stat().st_size > 0
    err = cli_error(capsys, "compare", "--out", out, "--tables-only", "--contrast", "qkvv:feature")
    assert "no model named 'feature' in this comparison" in err and "cls, qkvv" in err
    # the tables rebuilt without contrasts: the earlier contrasts' CSV and figure no longer match them
    assert main(["compare", "--out", out, "--tables-only"]) == 0
    assert not (tmp_path / "cmp/contrasts.csv").exists() and not (tmp_path / "cmp/contrasts.png").exists()
    assert "# Contrasts" not in (tmp_path / "cmp/results.md").read_text()


def test_a_comparison_refuses_an_unknown_contrast_before_any_cell(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--init", "a=scratch", "--out", str(out), "--contrast", "a:pixels", "--contrast", "a:b"]
    err = cli_error(capsys, *args, "--set", "data.name=synthetic", "--set", "model.name=mim_vit_femto")
    assert "--contrast a:b: no model named 'b'" in err and "its models and baselines: a, pixels, trivial" in err
    assert not (out / "cells").exists()  # a:pixels passed (baselines may be contrasted); nothing ran


def test_the_figure_draws_each_seeds_difference_the_spread_band_and_the_verdicts_colour():
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_rgba

    from mimkit.viz.contrast_plot import A_COLOUR, B_COLOUR, TIE_COLOUR, contrast_figure, verdict_colour

    rows = [
        *rows_of("qkvv", [90.0, 91.0, 92.0]),
        *rows_of("cls", [88.0, 88.5, 89.5]),
        *rows_of("vv", [91.0, 90.5, 92.5]),
    ]
    rows += [*rows_of("qkvv", [0.2, 0.3], "depth", "linprobe"), *rows_of("cls", [0.21, 0.25], "depth", "linprobe")]
    found = contrast_rows(rows, [("qkvv", "cls"), ("qkvv", "vv")])
    fig = contrast_figure([*found, {**found[0], "n": 0}])  # a pair without common seeds is not drawn
    axes = fig.axes
    assert len(axes) == 2  # top1 and depth_error differences share no axis
    assert [t.get_text().split("\n")[0] for t in axes[0].get_yticklabels()] == ["qkvv − cls", "qkvv − vv"]
    dots = [line for line in axes[0].lines if line.get_markersize() == 3]
    assert sorted(dots[0].get_xdata()) == pytest.approx([2.0, 2.5, 2.5])  # qkvv − cls on each seed
    bands = [c for c in axes[0].collections if isinstance(c, PolyCollection)]
    xs = bands[0].get_paths()[0].vertices[:, 0]
    assert max(xs) == pytest.approx(1.0) and min(xs) == pytest.approx(-1.0)  # ± the larger std (qkvv's 1.00)
    centres = [line for line in axes[0].lines if line.get_markersize() == 7]
    assert to_rgba(centres[0].get_color()) == to_rgba(A_COLOUR)  # qkvv better than cls
    assert found[2]["verdict"].startswith("≈") and to_rgba(centres[1].get_color()) == to_rgba(TIE_COLOUR)
    assert found[1]["metric"] == "depth_error" and len(axes[1].get_yticklabels()) == 1
    assert verdict_colour({"a": "x", "b": "y", "verdict": "y better"}) == B_COLOUR
    assert verdict_colour({"a": "x", "b": "y", "verdict": "one common seed: no verdict"}) is None  # drawn hollow
    import matplotlib.pyplot as plt

    plt.close(fig)
