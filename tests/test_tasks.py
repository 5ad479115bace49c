"""Geometric task data (boxes inside the canvas and tight around the item, rotations by the stated angle) and the
task metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from mimkit.data.datasets import ImageSet
from mimkit.data.tasks import make_localization, make_rotation, tight_box
from mimkit.eval.task_metrics import angle_error, average_precision, box_iou, detection_ap50, localization_metrics


def _items(n=40, size=28):
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[:, :, 6:20, 9:17] = 200  # a bright 14 x 8 rectangle, off-centre
    return ImageSet(images, torch.arange(n) % 10, torch.arange(n))


def test_localization_boxes_inside_canvas_and_tight():
    task = make_localization(_items(), canvas=64, scale=(0.25, 0.75), seed=3)
    assert task.images.shape == (40, 1, 64, 64) and task.targets.shape == (40, 4)
    b = task.targets
    assert (b >= 0).all() and (b <= 1).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    for i in range(40):  # the box is exactly the extent of the non-zero pixels
        expected = tight_box(task.images[i, 0] > 0) / 64
        torch.testing.assert_close(b[i], expected)
    widths = (b[:, 2] - b[:, 0]) * 64
    assert widths.max() / widths.min() > 1.8  # the scale really varies
    again = make_localization(_items(), canvas=64, scale=(0.25, 0.75), seed=3)
    assert torch.equal(again.images, task.images) and torch.equal(again.targets, task.targets)
    assert not torch.equal(make_localization(_items(), 64, seed=4).targets, task.targets)


def test_rotation_by_the_stated_angle():
    task = make_rotation(_items(), max_degrees=90, seed=0)
    assert task.targets.abs().max() <= 90 and task.targets.std() > 20
    # a 90-degree rotation maps the rectangle's (rows 6-20, cols 9-17) extent onto swapped axes
    one = ImageSet(_items(1).images, None, torch.tensor([0]))
    from mimkit.data import tasks

    original = tasks.keyed_uniform
    tasks.keyed_uniform = lambda keys, n, seed, stream: torch.ones(len(keys), n)  # angle = +90
    try:
        rotated = make_rotation(one, max_degrees=90).images[0, 0]
    finally:
        tasks.keyed_uniform = original
    box = tight_box(rotated > 100)
    w, h = box[2] - box[0], box[3] - box[1]
    assert (w.item(), h.item()) == (14, 8)  # was 8 wide and 14 high


def test_box_iou_hand_computed():
    a = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2]], dtype=torch.float32)
    b = torch.tensor([[1, 1, 3, 3], [0, 0, 2, 2], [2, 2, 3, 3], [0, 0, 2, 1]], dtype=torch.float32)
    torch.testing.assert_close(box_iou(a, b), torch.tensor([1 / 7, 1.0, 0.0, 0.5]))
    m = localization_metrics(a, b)
    assert m["mean_iou"] == pytest.approx((1 / 7 + 1 + 0 + 0.5) / 4) and m["iou50"] == 0.5


def test_average_precision_hand_computed():
    # ranked: hit, miss, hit, miss -> precision 1, 1/2, 2/3, 1/2; recall steps 1/4 at ranks 1 and 3
    correct = torch.tensor([True, False, True, False])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert average_precision(correct, scores) == pytest.approx(0.25 * 1 + 0.25 * (2 / 3))
    assert average_precision(torch.ones(3, dtype=torch.bool), torch.rand(3)) == pytest.approx(1.0)
    # all scores tied: one threshold, precision = recall = 1/2
    assert average_precision(torch.tensor([True, False]), torch.ones(2)) == pytest.approx(0.25)


def test_detection_ap_needs_both_class_and_box():
    boxes = torch.tensor([[0, 0, 1, 1]] * 3, dtype=torch.float32)
    shifted = torch.tensor([[0.6, 0.6, 1.6, 1.6]] + [[0, 0, 1, 1]] * 2, dtype=torch.float32)
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [4.0, 0.0]])
    labels = torch.tensor([0, 0, 0])  # image 0: right class, bad box; 1: wrong class; 2: right
    ap = detection_ap50(shifted, boxes, logits, labels)
    conf = logits.softmax(-1).max(-1).values  # ranks: image 0 (miss), image 1 (miss), image 2 (hit)
    assert conf.argsort(descending=True).tolist() == [0, 1, 2]
    assert ap == pytest.approx(1 / 3 * 1 / 3)


def test_angle_error():
    assert angle_error(torch.tensor([10.0, -20.0]), torch.tensor([[0.0], [-10.0]])) == pytest.approx(10.0)
    assert math.isclose(angle_error(torch.zeros(3), torch.zeros(3, 1)), 0.0)


def _task_run(tmp_path, name, *extra):
    import json

    from conftest import tiny_config
    from mimkit.training import pretrain

    cfg = tiny_config(
        "method.name=task", "init=scratch", "model.global_pool=avg", "train.steps=4", "train.eval_every=2", *extra
    )
    results = pretrain(cfg, tmp_path / name)
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return results, records


def test_combined_task_logs_classification_and_localisation_losses(tmp_path):
    results, records = _task_run(tmp_path, "comb", "data.task=combined")
    train = [r for r in records if r.get("event") == "train"]
    assert train and all("cls_loss" in r and "loc_loss" in r for r in train)
    for r in train:
        assert r["loss"] == pytest.approx(r["cls_loss"] + r["loc_loss"], rel=1e-5)
    held = [r for r in records if r.get("split") == "heldout"]
    assert all({"ap50", "mean_iou", "top1", "cls_loss", "loc_loss"} <= r.keys() for r in held)
    assert 0 <= results["final_heldout_ap50"] <= 1


def test_cluttered_combined_task_logs_its_three_losses(tmp_path):
    results, records = _task_run(tmp_path, "cc", "data.task=cluttered_combined")
    train = [r for r in records if r.get("event") == "train"]
    assert train and all({"cls_loss", "loc_loss", "objectness_loss"} <= r.keys() for r in train)
    for r in train:
        assert r["loss"] == pytest.approx(r["cls_loss"] + r["loc_loss"] + r["objectness_loss"], rel=1e-5)
    held = [r for r in records if r.get("split") == "heldout"]
    assert held and all({"ap50", "mean_iou", "top1", "cls_loss", "loc_loss"} <= r.keys() for r in held)
    assert 0 <= results["final_heldout_ap50"] <= 1


def test_frozen_rotation_head_leaves_the_encoder_untouched(tmp_path):
    from mimkit import load

    results, _ = _task_run(tmp_path, "rot", "data.task=rotation", "model.freeze=true")
    assert results["final_heldout_angle_error"] >= 0
    model = load(tmp_path / "rot")
    torch.manual_seed(0)  # pretrain() seeds with cfg.seed before building: the same random encoder
    from conftest import tiny_config
    from mimkit.config import resolved
    from mimkit.methods import build_method

    fresh = build_method(
        resolved(tiny_config("method.name=task", "data.task=rotation", "model.global_pool=avg", "model.freeze=true"))
    )
    for key, value in fresh.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    assert not torch.equal(model.angle_head.weight, fresh.angle_head.weight)  # the head did train


def test_geometric_tasks_train_without_crops_or_flips():
    from conftest import tiny_config
    from mimkit.config import resolved

    cfg = resolved(tiny_config("method.name=task", "data.task=localization"))
    assert cfg.data.crop_scale == [1.0, 1.0] and cfg.data.hflip is False
