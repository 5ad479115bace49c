"""`compare --pool NAME=A,B,C` (eval/pools.py): pretraining replicas pooled into one row (each replica's mean over its
own seeds, then mean ± std over replicas), in summary.csv, results.md, the figure and the contrasts (unpaired:
Welch's t-test against scipy's own); results.csv keeps the cells only; clear errors for bad or unknown pools."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
from scipy import stats

from conftest import cli_error
from mimkit.config import ConfigError
from mimkit.eval.compare import write_tables
from mimkit.eval.contrasts import contrast_rows
from mimkit.eval.pools import parse_pools, pooled_rows


def rows_of(model: str, values: list[float], protocol: str = "finetune", baseline: bool = False) -> list[dict]:
    return [
        dict(model=model, source="", protocol=protocol, task="classification", seed=s, baseline=baseline,
             metric="top1", value=v)
        for s, v in enumerate(values)
    ]  # fmt: skip


# three MAE replicas measured with 3, 1 and 2 fine-tuning seeds: replica means 81, 79 and 84
REPLICAS = [*rows_of("mae_s0", [80.0, 81.0, 82.0]), *rows_of("mae_s1", [79.0]), *rows_of("mae_s2", [83.0, 85.0])]
POOL = [("mae", ["mae_s0", "mae_s1", "mae_s2"])]


def test_a_pool_is_the_mean_and_std_over_its_replicas_means_not_over_every_seed():
    pooled = pooled_rows(REPLICAS, POOL)
    assert [(r["replica"], r["seed"], r["value"], r["replica_seeds"]) for r in pooled] == [
        ("mae_s0", 0, pytest.approx(81.0), 3),
        ("mae_s1", 1, pytest.approx(79.0), 1),
        ("mae_s2", 2, pytest.approx(84.0), 2),
    ]
    assert all(r["model"] == "mae" and r["pool"] == "mae_s0+mae_s1+mae_s2" and not r["baseline"] for r in pooled)
    # a replica without a cell in a column (still running) is left out of that column only
    linprobe = rows_of("mae_s0", [70.0], "linprobe") + rows_of("mae_s2", [74.0, 76.0], "linprobe")
    pooled = pooled_rows(REPLICAS + linprobe, POOL)
    assert [r["replica"] for r in pooled if r["protocol"] == "linprobe"] == ["mae_s0", "mae_s2"]
    assert pooled_rows(rows_of("pixels", [85.0], "knn", baseline=True), [("p", ["pixels", "x"])]) == []


def test_the_tables_show_the_pool_as_a_row_and_keep_the_cells_alone_in_results_csv(tmp_path):
    write_tables([*REPLICAS, *rows_of("pixels", [85.0, 85.0, 85.0], "knn", True)], tmp_path, pools=POOL)
    with open(tmp_path / "summary.csv") as fh:
        summary = {r["model"]: r for r in csv.DictReader(fh)}
    mae = summary["mae"]
    assert float(mae["mean"]) == pytest.approx(statistics.mean([81.0, 79.0, 84.0]))
    assert float(mae["std"]) == pytest.approx(statistics.stdev([81.0, 79.0, 84.0]))
    assert mae["n"] == "3" and mae["pool"] == "mae_s0+mae_s1+mae_s2" and summary["mae_s0"]["pool"] == ""
    with open(tmp_path / "results.csv") as fh:
        assert "mae" not in {r["model"] for r in csv.DictReader(fh)}
    table = (tmp_path / "results.md").read_text()
    assert "| **mae** (pool of 3) |  | 81.33 ± 2.52 † |" in table  # under the pixels (85), as its replicas
    assert "seeds per replica: classification finetune: mae_s0 3, mae_s1 1, mae_s2 2" in table
    # the replicas' own seed counts (3, 1, 2) make the header say so; the pool's replica count does not enter it
    assert "mean ± std over 1-3 seeds (unfinished cells)" in table


def test_a_column_without_every_replica_is_named_and_its_contrast_gets_no_verdict(tmp_path):
    linprobe = rows_of("mae_s0", [70.0], "linprobe") + rows_of("mae_s2", [74.0, 76.0], "linprobe")
    other = rows_of("sup", [60.0, 61.0, 62.0], "linprobe")
    write_tables([*REPLICAS, *linprobe, *other], tmp_path, pools=POOL, contrasts=[("mae", "sup")])
    table = (tmp_path / "results.md").read_text()
    assert "| **mae** (pool of 3) | 72.50 ± 3.54 (2 of 3 replicas) | 81.33 ± 2.52 |" in table
    assert "classification linprobe: mae_s0 1, mae_s2 2, 2 of 3 replicas" in table
    with open(tmp_path / "contrasts.csv") as fh:
        (row,) = [r for r in csv.DictReader(fh) if r["protocol"] == "linprobe"]
    # 12.5 points ahead, beyond both spreads: the rule alone would call it, but mae_s1's cell is still to come
    assert row["verdict"] == "mae without every replica here: no verdict" and (row["a_n"], row["b_n"]) == ("2", "3")


def test_each_side_of_an_unpaired_contrast_shows_its_own_count_and_spread():
    from mimkit.eval.contrasts import contrasts_markdown

    rows = [*REPLICAS, *rows_of("one", [70.0])]
    (row,) = contrast_rows([*rows, *pooled_rows(rows, POOL)], [("mae", "one")])
    text = contrasts_markdown([row])
    assert "| mae vs one | classification | finetune | 81.33 ± 2.52 | 70.00 | 11.33 | 3, 1 |" in text  # no ± on Δ
    assert "; pairs with a pool unpaired)" in text and "| n (A, B) | p (paired t, or Welch) |" in text


def test_a_pool_in_a_compare_summary_is_never_read_as_a_model(tmp_path):
    from mimkit.scaling.baselines import read_compare_summary

    write_tables([*rows_of("a", [80.0, 81.0]), *rows_of("b", [82.0])], tmp_path, pools=[("scratch", ["a", "b"])])
    with pytest.raises(ConfigError, match="no model named 'scratch'"):  # the pool named scratch is not the baseline
        read_compare_summary(tmp_path)


def test_a_contrast_with_a_pool_is_unpaired_with_welchs_p_and_the_tables_rule():
    other = rows_of("sup_s0", [76.0, 77.0]) + rows_of("sup_s1", [75.0]) + rows_of("sup_s2", [77.5])
    pools = [*POOL, ("sup", ["sup_s0", "sup_s1", "sup_s2"])]
    rows = [*REPLICAS, *other]
    rows += pooled_rows(rows, pools)
    (row,) = contrast_rows(rows, [("mae", "sup")])
    a, b = [81.0, 79.0, 84.0], [76.5, 75.0, 77.5]
    assert row["paired"] is False and row["p_paired_t"] is None and row["seed_deltas"] == []
    assert row["delta"] == pytest.approx(statistics.mean(a) - statistics.mean(b)) and row["n"] == 3
    assert row["delta_std"] == pytest.approx((statistics.variance(a) + statistics.variance(b)) ** 0.5)
    assert row["p_welch_t"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    # beyond the larger spread, but Welch's t-test does not agree (p 0.056): not a finding
    assert row["delta"] > max(statistics.stdev(a), statistics.stdev(b))
    assert row["verdict"] == "≈ beyond the seed spread but p 0.056 >= 0.05: not a finding"
    far = rows_of("f_s0", [72.0]) + rows_of("f_s1", [73.0]) + rows_of("f_s2", [71.5])
    rows_far = [*REPLICAS, *far]
    rows_far += pooled_rows(rows_far, [*POOL, ("f", ["f_s0", "f_s1", "f_s2"])])
    (lead,) = contrast_rows(rows_far, [("mae", "f")])
    assert lead["p_welch_t"] < 0.05 and lead["verdict"] == "mae better"  # both the spread and the test
    # one replica of mae against a close pool: the same rule calls no finding inside the larger spread
    close = rows_of("c_s0", [82.0]) + rows_of("c_s1", [78.0]) + rows_of("c_s2", [82.5])
    rows = [*REPLICAS, *close]
    rows += pooled_rows(rows, [*POOL, ("c", ["c_s0", "c_s1", "c_s2"])])
    (tie,) = contrast_rows(rows, [("mae", "c")])
    assert tie["verdict"].startswith("≈ within the seed spread")
    # a replica without a number: no verdict and no p (scipy would give nan)
    nan = [*REPLICAS, *rows_of("n_s0", [80.0]), *rows_of("n_s1", [float("nan")])]
    (broken,) = contrast_rows([*nan, *pooled_rows(nan, [*POOL, ("n", ["n_s0", "n_s1"])])], [("mae", "n")])
    assert broken["verdict"] == "not a number on some seed: no verdict" and broken["p_welch_t"] is None
    # a pool against a model with one seed: no verdict
    (lone,) = contrast_rows([*rows, *rows_of("one", [70.0])], [("mae", "one")])
    assert lone["verdict"] == "one value on a side: no verdict" and lone["p_welch_t"] is None


@pytest.mark.parametrize(
    "spec, why",
    [
        ("mae", "give NAME=A,B"),
        ("mae=a", "two or more different models"),
        ("mae=a,a", "two or more different models"),
        ("mae=a,,b", "give NAME=A,B"),
        ("a=a,b", "is one of its models"),
        ("p=a+b,c", "no '\\+' in the names"),
    ],
)
def test_a_malformed_pool_is_refused(spec, why):
    with pytest.raises(ConfigError, match=why):
        parse_pools([spec])
    with pytest.raises(ConfigError, match="two pools are named 'p'"):
        parse_pools(["p=a,b", "p=c,d"])


def test_tables_only_pools_and_contrasts_and_refuses_unknown_members(tmp_path, capsys):
    from mimkit.cli import main

    cells = tmp_path / "cmp" / "cells"
    for row in [*REPLICAS, *rows_of("scratch", [78.0, 78.5, 79.0])]:
        name = f"{row['model']}__finetune__classification__seed{row['seed']}"
        (cells / name).mkdir(parents=True)
        (cells / name / "cell.json").write_text(json.dumps({"config_hash": "x", "row": row}))
    out = str(tmp_path / "cmp")
    assert main(["compare", "--out", out, "--tables-only", "--pool", "mae=mae_s0,mae_s1,mae_s2", "--contrast",
                 "mae:scratch"]) == 0  # fmt: skip
    with open(tmp_path / "cmp/contrasts.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["a"] == "mae" and row["paired"] == "False" and row["p_paired_t"] == "" and row["p_welch_t"]
    assert "(Welch)" in (tmp_path / "cmp/results.md").read_text()
    err = cli_error(capsys, "compare", "--out", out, "--tables-only", "--pool", "mae=mae_s0,mae_s9")
    assert "no model named 'mae_s9' in this comparison" in err and "mae_s0, mae_s1, mae_s2, scratch" in err
    err = cli_error(capsys, "compare", "--out", out, "--tables-only", "--pool", "scratch=mae_s0,mae_s1")
    assert "'scratch' is already a model or baseline" in err
    err = cli_error(capsys, "compare", "--out", out, "--tables-only", "--pool", "p=mae_s0,mae_s1", "--contrast", "q:p")
    assert "no model named 'q'" in err


def test_a_comparison_refuses_an_unknown_pool_member_before_any_cell(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--init", "a=scratch", "--out", str(out), "--pool", "p=a,pixels"]
    err = cli_error(capsys, *args, "--set", "data.name=synthetic", "--set", "model.name=mim_vit_femto")
    assert "--pool p=...: no model named 'pixels'" in err  # a baseline is not a replica
    assert not (out / "cells").exists()


def test_the_figure_names_the_pool_and_titles_the_models_own_seeds():
    import matplotlib.pyplot as plt

    from mimkit.eval.compare import figure_panels, summarize
    from mimkit.viz.compare_plot import compare_figure

    three_seeds = [*rows_of("mae_s0", [80.0, 81.0, 82.0]), *rows_of("mae_s1", [79.0, 80.0, 78.0])]
    pools = [("mae", ["mae_s0", "mae_s1"])]
    summary = summarize([*three_seeds, *pooled_rows(three_seeds, pools)])
    fig = compare_figure(summary, figure_panels(summary))
    assert "mae (pool of 2)" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert "mean ± std over 3 seeds" in fig._suptitle.get_text()  # not "2-3 seeds": the pool's 2 are replicas
    plt.close(fig)
