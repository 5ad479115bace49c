"""Commands end with a short summary a person reads (summary.py), or with `--json` the whole results for scripts."""

from __future__ import annotations

import json

import mimkit.summary as summary
from conftest import run_cli, sets


def test_the_summary_names_the_numbers_the_figures_and_the_results_file(tmp_path):
    results = {
        "step": 702,
        "init": "runs/mae (mae, step 800)",
        "best_heldout_top1": 88.51,
        "final_heldout_top1": 88.4,
        "final_heldout_loss": 0.41234,
        "seconds": 3725.2,
        "loss_curve": "runs/ft/figures/loss_curves.png",
        "train_images": 60000,
        "images_per_epoch": 59904,
    }
    lines = summary.summary_lines("finetune runs/ft", results, tmp_path / "results.json")
    assert lines[0] == "finetune runs/ft done in 1h02m05s"
    text = "\n".join(lines)
    assert "steps" in text and "702" in text and "best heldout top1" in text and "88.51" in text
    assert "final heldout loss" in text and "0.4123" in text and "runs/mae (mae, step 800)" in text
    assert "runs/ft/figures/loss_curves.png" in text and lines[-1].endswith(str(tmp_path / "results.json"))
    assert "60000" not in text and len(lines) <= 10  # bookkeeping stays in the file


def test_json_flag_prints_the_whole_results_for_scripts(tmp_path):
    common = ["device=cpu", "data.name=synthetic", "data.synthetic_size=64", "model.name=mim_vit_femto"]
    plain = run_cli("knn", "--init", "scratch", "--out", str(tmp_path / "a"), *sets(common), check=True)
    assert f"knn {tmp_path / 'a'} done" in plain.stdout and "top-1" in plain.stdout
    assert f"all results{' ' * 18}{tmp_path / 'a' / 'knn.json'}" in plain.stdout
    scripted = run_cli("--json", "knn", "--init", "scratch", "--out", str(tmp_path / "b"), *sets(common), check=True)
    printed = json.loads(scripted.stdout[scripted.stdout.index("{") :])
    assert printed == json.loads((tmp_path / "b" / "knn.json").read_text())
