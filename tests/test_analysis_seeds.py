"""`mimkit analyze seeds`: layer means over several analyses (one per seed) against a written-out computation, the
errors for analyses that cannot be pooled, and the command end to end on real analyses."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import sets
from mimkit.analysis.seeds import aggregate_seeds, run_seeds
from mimkit.cli import main
from mimkit.config import ConfigError


def _analysis(distance: dict[str, list[float]], kl: dict[str, list[float]], cka_first_last: float) -> dict:
    """A results.json as `analyze report` writes it, reduced to what the pooling reads."""
    models = {name: {"depth": len(curve)} for name, curve in distance.items()}
    within = {}
    for name, curve in distance.items():
        m = np.eye(len(curve))
        m[0, -1] = m[-1, 0] = cka_first_last
        within[name] = m.tolist()
    return {
        "models": models,
        "attention": {n: {"distance": [], "distance_layer_mean": c} for n, c in distance.items()},
        "diversity": {n: {"kl": [], "kl_layer_mean": c} for n, c in kl.items()},
        "cka": {"within": within},
    }


SUP_KL = [1, 1, 0, 0]
RUNS = [
    _analysis({"mae": [2.0, 3.0, 4.0, 5.0], "sup": [2.0, 6.0, 8.0, 9.0]}, {"mae": [1, 1, 1, 1], "sup": SUP_KL}, 0.5),
    _analysis({"mae": [4.0, 3.0, 6.0, 5.0], "sup": [2.0, 8.0, 8.0, 7.0]}, {"mae": [1, 1, 1, 3], "sup": SUP_KL}, 0.7),
    _analysis({"mae": [3.0, 3.0, 5.0, 8.0], "sup": [2.0, 7.0, 8.0, 8.0]}, {"mae": [1, 1, 1, 2], "sup": SUP_KL}, 0.9),
]


def test_layer_means_pool_to_mean_and_sample_std_over_seeds():
    agg = aggregate_seeds(RUNS, ["s0", "s1", "s2"])
    assert agg["seeds"] == 3 and agg["models"] == ["mae", "sup"]
    mae = agg["layers"]["attention"]["mae"]["distance"]
    # layer 1: (2, 4, 3) -> mean 3, sample std 1; layer 4: (5, 5, 8) -> mean 6, std sqrt(3)
    np.testing.assert_allclose(mae["mean"], [3.0, 3.0, 5.0, 6.0])
    np.testing.assert_allclose(mae["std"], [1.0, 0.0, 1.0, math.sqrt(3.0)])
    # last three layers per seed: (3+4+5)/3 = 4, (3+6+5)/3 = 14/3, (3+5+8)/3 = 16/3 -> mean 14/3, std 2/3
    assert mae["tail"]["mean"] == pytest.approx(14 / 3) and mae["tail"]["std"] == pytest.approx(2 / 3)
    kl = agg["layers"]["diversity"]["mae"]["kl"]
    np.testing.assert_allclose(kl["mean"], [1, 1, 1, 2])
    np.testing.assert_allclose(kl["std"], [0, 0, 0, 1])
    fl = agg["cka"]["sup"]["first_vs_last"]
    assert fl["mean"] == pytest.approx(0.7) and fl["std"] == pytest.approx(0.2)
    # mean off-diagonal of a 4x4 with two entries c and ten zeros: 2c / 12
    assert agg["cka"]["mae"]["mean_between_layers"]["mean"] == pytest.approx(2 * 0.7 / 12)
    assert "attention_foreground" not in agg["layers"]  # no run has it: not invented


@pytest.mark.parametrize(
    "runs, message",
    [
        (RUNS[:1], "at least 2 analyses"),
        ([RUNS[0], _analysis({"mae": [1.0, 2.0, 3.0, 4.0]}, {"mae": [0, 0, 0, 0]}, 0.1)], "differ from"),
        (
            [RUNS[0], _analysis({"mae": [1.0, 2.0], "sup": [1.0, 2.0]}, {"mae": [0, 0], "sup": [0, 0]}, 0.1)],
            "layers in different analyses",
        ),
    ],
    ids=["one-seed", "other-models", "other-depth"],
)
def test_analyses_that_cannot_be_pooled_are_refused(tmp_path, runs, message):
    dirs = []
    for i, run in enumerate(runs):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"s{i}/results.json").write_text(json.dumps(run))
        dirs.append(tmp_path / f"s{i}")
    with pytest.raises(ConfigError, match=message):
        run_seeds(dirs, tmp_path / "out")
    assert not (tmp_path / "out/seeds.json").exists()


def test_missing_or_corrupt_analysis_is_a_user_error(tmp_path, capsys):
    for name, text in (("good", json.dumps(RUNS[0])), ("bad", '{"models": ')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    (tmp_path / "empty").mkdir()
    for other, message in (("empty", "empty: no results.json"), ("bad", "bad: results.json is not valid JSON")):
        args = ["--from", str(tmp_path / "good"), "--from", str(tmp_path / other), "--out", str(tmp_path / "out")]
        code = main(["analyze", "seeds", *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_from_outside_analyze_seeds_is_refused(tmp_path, capsys):
    code = main(["analyze", "attention", "--model", "scratch", "--from", str(tmp_path), "--out", str(tmp_path)])
    assert code == 2 and "--from belongs to `analyze seeds`" in capsys.readouterr().err


def test_analyze_seeds_end_to_end_pools_real_analyses(tmp_path, capsys):
    """Two analyses of a random femto ViT drawn with seeds 0 and 1 (synthetic images, foreground on): the pooled
    layer means are the two runs' means, the spread their sample std, and the figures and table are written."""
    common = ["--images", "8", "--batch-size", "4", "--foreground"]
    synthetic = ["device=cpu", "data.name=synthetic", "data.img_size=16", "model.name=mim_vit_femto"]
    dirs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        args = ["analyze", "report", "--model", "R=scratch", "--out", str(out), *common]
        assert main([*args, *sets([*synthetic, f"seed={seed}"])]) == 0
        dirs += ["--from", str(out)]
    capsys.readouterr()
    assert main(["analyze", "seeds", *dirs, "--out", str(tmp_path / "pooled")]) == 0
    assert str(tmp_path / "pooled/seeds.md") in capsys.readouterr().out
    runs = [json.loads((tmp_path / f"seed{s}/results.json").read_text()) for s in (0, 1)]
    agg = json.loads((tmp_path / "pooled/seeds.json").read_text())
    for section, metric in (("attention", "distance"), ("diversity", "js"), ("attention_foreground", "entropy")):
        curves = np.asarray([r[section]["R"][f"{metric}_layer_mean"] for r in runs])
        assert not np.allclose(curves[0], curves[1])  # the seeds differ, so the spread is not trivially zero
        np.testing.assert_allclose(agg["layers"][section]["R"][metric]["mean"], curves.mean(0), rtol=1e-9)
        np.testing.assert_allclose(agg["layers"][section]["R"][metric]["std"], curves.std(0, ddof=1), rtol=1e-9)
    table = (tmp_path / "pooled/seeds.md").read_text()
    assert "over 2 seeds" in table and "| R |" in table and "## attention, foreground" in table
    for name in ("seeds_distance.png", "seeds_js.png", "seeds_kl_foreground.png"):
        assert (tmp_path / "pooled" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
