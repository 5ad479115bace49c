"""Geometric tasks that need learned spatial features (issue 19, item 3): cluttered localisation (thresholding and
the mean box fail on it), the depth scenes and their nearness maps, the tracking frames and their correlation
head, the dense heads on the patch tokens, and class subsets for fine-grained and concept-split transfer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from mimkit.config import ConfigError, resolved
from mimkit.data.datasets import ImageSet, build_data
from mimkit.data.keyed_random import keyed_uniform, sample_keys
from mimkit.data.tasks import (
    DEPTH_GRID,
    ITEM_LEVEL,
    STREAM_TASK,
    extreme_points,
    make_cluttered_localization,
    make_depth,
    make_localization,
    make_tracking,
    tight_box,
)
from mimkit.eval.baselines import threshold_boxes, trivial_scores
from mimkit.eval.task_metrics import box_iou, localization_metrics
from mimkit.methods.task.model import TaskModel, inside_box, patch_centres


def _items(n=60, size=28):
    """Items on a black surround, as Fashion-MNIST's: a bright irregular blob, a different one per image."""
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    for i in range(n):
        h, w = 10 + int(torch.randint(0, 12, (1,), generator=gen)), 8 + int(torch.randint(0, 12, (1,), generator=gen))
        top, left = (size - h) // 2, (size - w) // 2
        images[i, 0, top : top + h, left : left + w] = 120 + int(torch.randint(0, 130, (1,), generator=gen))
    return ImageSet(images, torch.arange(n) % 10, torch.arange(n))


def test_thresholding_solves_plain_localisation_but_not_the_cluttered_one():
    items = _items()
    plain = make_localization(items, canvas=32, seed=1)
    cluttered = make_cluttered_localization(items, canvas=32, seed=1)
    assert localization_metrics(threshold_boxes(plain.images), plain.targets)["mean_iou"] > 0.9
    thresholded = localization_metrics(threshold_boxes(cluttered.images), cluttered.targets)["mean_iou"]
    mean_box = cluttered.targets.mean(0, keepdim=True).expand(len(items), 4)
    assert thresholded < 0.5
    assert float(box_iou(mean_box, cluttered.targets).mean()) < 0.5
    background = cluttered.images.float().mean(dim=(1, 2, 3))
    assert float(background.min()) > 10  # the canvas is textured, not black


def test_cluttered_boxes_are_the_items_own_and_reproducible():
    items = _items()
    task = make_cluttered_localization(items, canvas=32, scale=(0.3, 0.8), seed=2, distractors=3)
    b = task.targets
    assert task.images.shape == (60, 1, 32, 32) and b.shape == (60, 4)
    assert (b >= 0).all() and (b <= 1).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    # written out: the item, resized to its drawn side, is pasted last with its own pixels at its drawn place, and
    # the target is the tight box of those pixels
    u = keyed_uniform(sample_keys(items.ids, 0), 3 + 6 * 3, 2, STREAM_TASK + 4)
    for i in range(len(items)):
        side = max(4, min(32, int(round(32 * (0.3 + u[i, 0].item() * 0.5)))))
        top, left = int(u[i, 1].item() * (32 - side + 1)), int(u[i, 2].item() * (32 - side + 1))
        item = F.interpolate(items.images[i : i + 1].float(), size=(side, side), mode="bilinear", antialias=True)[0]
        mask = item.clamp(0, 255).amax(0) > ITEM_LEVEL
        region = task.images[i, 0, top : top + side, left : left + side]
        assert torch.equal(region[mask], item[0].clamp(0, 255)[mask].round().to(torch.uint8))
        torch.testing.assert_close(b[i], (tight_box(mask) + torch.tensor([left, top, left, top])) / 32)
    again = make_cluttered_localization(items, canvas=32, scale=(0.3, 0.8), seed=2, distractors=3)
    assert torch.equal(again.images, task.images) and torch.equal(again.targets, task.targets)
    no_clutter = make_cluttered_localization(items, canvas=32, scale=(0.3, 0.8), seed=2, distractors=0)
    assert torch.equal(no_clutter.targets, task.targets)  # distractors never move the item or its box
    assert not torch.equal(no_clutter.images, task.images)


def _square_items(n=8, size=28):
    """Fully bright squares: an item's mask is its whole pasted square, so the map can be written out."""
    return ImageSet(torch.full((n, 1, size, size), 200, dtype=torch.uint8), None, torch.arange(n) + 100)


def test_depth_map_of_one_item_is_its_side_over_its_square():
    data = _square_items()
    task = make_depth(data, canvas=32, items=1, seed=5)
    u = keyed_uniform(sample_keys(data.ids, 0), 4, 5, STREAM_TASK + 5)  # the generator's own draws
    for i in range(len(data)):
        side = max(3, int(round(32 * (0.25 + 0.45 * u[i, 0].item()))))
        top, left = int(u[i, 2] * (32 - side + 1)), int(u[i, 3] * (32 - side + 1))
        full = torch.zeros(1, 1, 32, 32)
        full[..., top : top + side, left : left + side] = side / 32
        expected = F.adaptive_avg_pool2d(full, DEPTH_GRID).flatten()
        torch.testing.assert_close(task.targets[i], expected, rtol=1e-5, atol=1e-6)
    assert task.targets.shape == (8, DEPTH_GRID * DEPTH_GRID)


def test_depth_nearer_items_occlude_farther_ones():
    task = make_depth(_square_items(30), canvas=32, items=3, seed=1)
    u = keyed_uniform(sample_keys(torch.arange(30) + 100, 0), 12, 1, STREAM_TASK + 5).view(30, 3, 4)
    for i in range(30):
        sides = [max(3, int(round(32 * (0.25 + 0.45 * d[0].item())))) for d in u[i]]
        largest = max(range(3), key=lambda k: sides[k])
        side, top, left = (
            sides[largest],
            int(u[i, largest, 2] * (33 - sides[largest])),
            int(u[i, largest, 3] * (33 - sides[largest])),
        )
        # every cell wholly inside the largest (nearest, drawn last) square reads its nearness
        cell = 32 // DEPTH_GRID
        grid = task.targets[i].view(DEPTH_GRID, DEPTH_GRID)
        for r in range(DEPTH_GRID):
            for c in range(DEPTH_GRID):
                if (
                    top <= r * cell
                    and (r + 1) * cell <= top + side
                    and left <= c * cell
                    and (c + 1) * cell <= left + side
                ):
                    assert grid[r, c].item() == pytest.approx(side / 32)
        assert grid.max().item() <= side / 32 + 1e-6


def test_dense_localisation_head_trains_on_patches_inside_the_box():
    centres = patch_centres(4, 4, torch.device("cpu"))
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.4, 0.55, 1.0, 1.0]])
    inside = inside_box(boxes, centres)
    assert inside[0].nonzero().flatten().tolist() == [0, 1, 4, 5]  # centres 0.125 and 0.375 on each axis
    assert inside[1].nonzero().flatten().tolist() == [10, 11, 14, 15]
    cfg = resolved(tiny_config("method.name=task", "data.task=cluttered_localization", "init=scratch"))
    from mimkit.methods import build_method

    model = build_method(cfg)
    assert isinstance(model, TaskModel) and model.dense_head is not None
    pred = model.predict(torch.randn(2, 1, 16, 16))
    assert pred["objectness"].shape == (2, 16) and pred["patch_boxes"].shape == (2, 16, 4)
    best = pred["objectness"].argmax(1)
    torch.testing.assert_close(pred["boxes"], pred["patch_boxes"][torch.arange(2), best])
    losses = model.losses(pred, {"targets": boxes})
    positive = inside.float()
    expected_obj = F.binary_cross_entropy_with_logits(pred["objectness"], positive)
    diff = (pred["patch_boxes"] - boxes[:, None]).abs().sum(-1)
    expected_box = (diff * positive).sum() / (4 * positive.sum())
    torch.testing.assert_close(losses["objectness_loss"], expected_obj)
    torch.testing.assert_close(losses["loc_loss"], expected_box)


def test_cluttered_combined_head_learns_the_class_on_patches_inside_the_box():
    """The detection analogue: per patch objectness, box and class scores; the image's class and box are its most
    confident patch's; the class loss is the cross-entropy averaged over the patches inside the box."""
    centres = patch_centres(4, 4, torch.device("cpu"))
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.4, 0.55, 1.0, 1.0]])
    labels = torch.tensor([3, 7])
    cfg = resolved(tiny_config("method.name=task", "data.task=cluttered_combined", "init=scratch"))
    from mimkit.methods import build_method

    model = build_method(cfg)
    pred = model.predict(torch.randn(2, 1, 16, 16))
    classes = cfg.model.num_classes
    assert pred["patch_logits"].shape == (2, 16, classes) and pred["logits"].shape == (2, classes)
    best = pred["objectness"].argmax(1)
    torch.testing.assert_close(pred["logits"], pred["patch_logits"][torch.arange(2), best])
    torch.testing.assert_close(pred["boxes"], pred["patch_boxes"][torch.arange(2), best])
    losses = model.losses(pred, {"targets": boxes, "labels": labels})
    inside = inside_box(boxes, centres)
    expected = []  # written out: one cross-entropy per patch inside its image's box
    for i in range(2):
        for p in inside[i].nonzero().flatten().tolist():
            expected.append(F.cross_entropy(pred["patch_logits"][i, p][None], labels[i][None]))
    torch.testing.assert_close(losses["cls_loss"], torch.stack(expected).mean())
    total = losses["objectness_loss"] + losses["loc_loss"] + losses["cls_loss"]
    torch.testing.assert_close(losses["loss"], total)


def test_cluttered_combined_trivial_predictors_score_low():
    """Neither the mean box with the majority class nor thresholding can pass for a detector on cluttered canvases."""
    cfg = resolved(tiny_config("method.name=task", "data.task=cluttered_combined", "data.task_scale=[0.4,0.8]"))
    data = build_data(cfg, lambda *_: None)
    scores = trivial_scores("cluttered_combined", data.train, data.heldout, cfg.model.num_classes)
    majority = int(torch.bincount(data.train.labels).argmax())
    assert scores["top1"] == pytest.approx(100 * float((data.heldout.labels == majority).float().mean()))
    assert scores["threshold_iou"] < 0.5 and scores["mean_iou"] < 0.5
    assert scores["ap50"] <= scores["top1"] / 100 + 1e-6  # a hit needs the right class


def test_dense_tasks_train_and_report_their_metrics(tmp_path):
    from mimkit.training import pretrain

    for task, metric in (
        ("cluttered_localization", "mean_iou"),
        ("cluttered_combined", "ap50"),
        ("depth", "depth_error"),
        ("keypoints", "keypoint_error"),
        ("tracking", "displacement_error"),
    ):
        cfg = tiny_config(
            "method.name=task", f"data.task={task}", "init=scratch", "train.steps=4", "train.eval_every=2"
        )
        results = pretrain(cfg, tmp_path / task)
        assert results[f"final_heldout_{metric}"] >= 0
    depth = resolved(tiny_config("data.task=depth"))
    lines = []
    data = build_data(depth, lines.append)
    n = len(data.train) + len(data.heldout)  # drawing the scenes says what it does and how long it took
    assert f"[data] depth: drawing {n:,} scenes (train and held-out)" in lines
    assert any(line.startswith(f"[data] depth: {n:,} scenes in ") for line in lines)
    trivial = trivial_scores("depth", data.train, data.heldout)
    mean_map = data.train.targets.mean(0, keepdim=True)
    assert trivial["depth_error"] == pytest.approx(float((data.heldout.targets - mean_map).abs().mean()), rel=1e-6)


def test_class_subsets_keep_and_relabel_classes():
    cfg = resolved(tiny_config("data.class_subset=[7,2,5]"))
    full = build_data(resolved(tiny_config()), lambda *_: None)
    sub = build_data(cfg, lambda *_: None)
    whole = {
        c: {int(i) for s in (full.train, full.heldout) for i in s.ids[s.labels == c]} for c in (7, 2, 5)
    }  # the subset is taken before the held-out split, so compare with both splits together
    for split in (sub.train, sub.heldout):
        assert set(split.labels.tolist()) <= {0, 1, 2}
        for new, old in enumerate((7, 2, 5)):  # relabelled in the order given
            assert {int(i) for i in split.ids[split.labels == new]} <= whole[old]
    assert len(sub.train) + len(sub.heldout) == sum(len(v) for v in whole.values())
    with pytest.raises(ConfigError, match="does not have"):
        build_data(resolved(tiny_config("data.class_subset=[1,12]")), lambda *_: None)
    with pytest.raises(ConfigError, match="at least 2 different"):
        resolved(tiny_config("data.class_subset=[3,3]"))


def test_combined_loss_curves_average_the_seeds_at_shared_steps(tmp_path):
    import json

    import numpy as np

    from mimkit.eval.loss_curves import mean_curves, plot_combined_losses, read_curve

    def write(run, values):
        run.mkdir(parents=True)
        lines = [json.dumps({"event": "eval", "step": 0, "cls_loss": 9.0, "loc_loss": 9.0})]
        lines += [json.dumps({"event": "train", "step": s, "cls_loss": c, "loc_loss": loc}) for s, c, loc in values]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    write(tmp_path / "a0", [(2, 1.0, 0.5), (4, 0.8, 0.4), (6, 0.6, 0.3)])
    write(tmp_path / "a1", [(2, 2.0, 0.7), (4, 1.2, 0.6)])  # stopped earlier: step 6 is not shared
    curve = read_curve(tmp_path / "a0")
    assert curve["step"].tolist() == [2, 4, 6] and curve["cls_loss"].tolist() == [1.0, 0.8, 0.6]  # no eval rows
    mean = mean_curves([curve, read_curve(tmp_path / "a1")])
    assert mean["step"].tolist() == [2, 4]
    np.testing.assert_allclose(mean["cls_loss"], [1.5, 1.0])
    np.testing.assert_allclose(mean["loc_loss_std"], [np.std([0.5, 0.7], ddof=1), np.std([0.4, 0.6], ddof=1)])
    path = plot_combined_losses({"mae": [tmp_path / "a0", tmp_path / "a1"]}, tmp_path / "fig.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_combined_losses_table_reads_the_curves_at_shared_steps_and_the_final_metrics(tmp_path):
    import json

    import numpy as np

    from mimkit.eval.loss_curves import losses_markdown

    def write(run, values, final):
        run.mkdir(parents=True)
        lines = [json.dumps({"event": "train", "step": s, "cls_loss": c, "loc_loss": loc}) for s, c, loc in values]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (run / "results.json").write_text(json.dumps({f"final_heldout_{k}": v for k, v in final.items()}))

    steps = range(10, 110, 10)  # 10 logged steps: 10% of 100 is step 10, 25% is the nearer of 20/30, 50% is 50
    write(tmp_path / "m0", [(s, 1.0 / s, 0.5) for s in steps], {"top1": 80.0, "mean_iou": 0.5, "ap50": 0.4})
    write(tmp_path / "m1", [(s, 3.0 / s, 0.7) for s in steps], {"top1": 84.0, "mean_iou": 0.7, "ap50": 0.6})
    text = losses_markdown({"mae": [tmp_path / "m0", tmp_path / "m1"]}, "cluttered_combined", (0.1, 0.5, 1.0))
    header = next(line for line in text.splitlines() if "at step" in line)
    assert "cls_loss at step 10 | cls_loss at step 50 | cls_loss at step 100 | loc_loss at step 10" in header
    row = next(line for line in text.splitlines() if line.startswith("| mae") and "0.200" in line)
    cells = [c.strip() for c in row.split("|")[2:-1]]
    sd = np.std([0.1, 0.3], ddof=1)
    assert cells[0] == f"0.200 ± {sd:.3f}" and cells[2] == f"0.020 ± {np.std([0.01, 0.03], ddof=1):.3f}"
    assert cells[3] == f"0.600 ± {np.std([0.5, 0.7], ddof=1):.3f}"
    final = [line for line in text.splitlines() if line.startswith("| mae")][-1]
    assert f"82.00 ± {np.std([80.0, 84.0], ddof=1):.2f}" in final and "0.600 ± 0.141" in final


def test_extreme_points_written_out():
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[1, 3:5] = True  # top row: columns 3-4
    mask[2:5, 1:7] = True
    mask[5, 2] = True  # bottom row: column 2
    mask[3, 7] = True  # right-most column: row 3
    points = extreme_points(mask).tolist()
    assert points == [
        [4.0, 1.5],
        [2.5, 5.5],
        [1.5, 3.5],
        [7.5, 3.5],
    ]  # top (columns 3-4), bottom, left (rows 2-4), right


def test_keypoints_are_the_extremes_of_the_boxed_item():
    items = _items()
    boxes = make_cluttered_localization(items, canvas=32, seed=4).targets * 32
    task = make_cluttered_localization(items, canvas=32, seed=4, target="keypoints")
    points = task.targets.view(-1, 4, 2) * 32
    torch.testing.assert_close(points[:, 0, 1], boxes[:, 1] + 0.5)  # the top-most point sits on the box's top row
    torch.testing.assert_close(points[:, 1, 1], boxes[:, 3] - 0.5)
    torch.testing.assert_close(points[:, 2, 0], boxes[:, 0] + 0.5)
    torch.testing.assert_close(points[:, 3, 0], boxes[:, 2] - 0.5)
    mean = task.targets.mean(0, keepdim=True)
    from mimkit.eval.task_metrics import keypoint_error

    trivial = trivial_scores(
        "keypoints",
        ImageSet(task.images, None, task.ids, task.targets),
        ImageSet(task.images, None, task.ids, task.targets),
    )
    expected = (task.targets - mean).view(-1, 4, 2).norm(dim=-1).mean()
    assert trivial["keypoint_error"] == pytest.approx(float(expected), rel=1e-6)
    assert keypoint_error(task.targets, task.targets) == 0.0


def test_keypoint_head_is_a_soft_argmax_over_patch_centres():
    from mimkit.methods import build_method

    model = build_method(resolved(tiny_config("method.name=task", "data.task=keypoints", "init=scratch")))
    head = model.dense_head.net[-1]
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)  # flat heat maps: every keypoint at the mean of the patch centres
    pred = model.predict(torch.randn(3, 1, 16, 16))["keypoints"]
    torch.testing.assert_close(pred, torch.full((3, 8), 0.5))

    class Peak(torch.nn.Module):  # every keypoint's heat map peaks at patch (row 1, column 3) of the 4 x 4 grid
        def forward(self, grid):
            maps = torch.full((grid.shape[0], 4, 4, 4), -30.0)
            maps[:, :, 1, 3] = 30.0
            return maps

    model.dense_head = Peak()
    pred = model.predict(torch.randn(2, 1, 16, 16))["keypoints"].view(2, 4, 2)
    torch.testing.assert_close(pred, torch.tensor([3.5 / 4, 1.5 / 4]).expand(2, 4, 2))  # that patch's centre (x, y)


def test_tracking_frames_move_only_the_item_by_the_target():
    items = _items()
    task = make_tracking(items, canvas=32, seed=3, distractors=2, max_shift=0.25)
    assert task.images.shape == (60, 2, 32, 32) and task.targets.shape == (60, 2)
    assert float(task.targets.abs().max()) <= 0.25 + 1e-6
    u = keyed_uniform(sample_keys(items.ids, 0), 5 + 12, 3, STREAM_TASK + 6)  # the generator's own draws
    for i in range(len(items)):
        first, second = task.images[i, 0], task.images[i, 1]
        dx, dy = (task.targets[i] * 32).round().int().tolist()
        side = max(4, min(32, int(round(32 * (0.3 + u[i, 0].item() * 0.2)))))
        item = F.interpolate(items.images[i : i + 1].float(), size=(side, side), mode="bilinear", antialias=True)[0]
        mask = item.clamp(0, 255).amax(0) > ITEM_LEVEL
        pixels = item[0].clamp(0, 255).round().to(torch.uint8)[mask]
        # find the item in frame 1 by its own pixels, then check it sits (dx, dy) away in frame 2
        found = [
            (top, left)
            for top in range(33 - side)
            for left in range(33 - side)
            if torch.equal(first[top : top + side, left : left + side][mask], pixels)
        ]
        assert found, f"item {i} not in frame 1"
        top, left = found[0]
        assert 0 <= top + dy <= 32 - side and 0 <= left + dx <= 32 - side  # inside the canvas in both frames
        assert torch.equal(second[top + dy : top + dy + side, left + dx : left + dx + side][mask], pixels)
        # nothing else moved: outside both item footprints the frames are the same scene
        moved = torch.zeros(32, 32, dtype=torch.bool)
        moved[top : top + side, left : left + side] = True
        moved[top + dy : top + dy + side, left + dx : left + dx + side] = True
        assert torch.equal(first[~moved], second[~moved])
    again = make_tracking(items, canvas=32, seed=3, distractors=2, max_shift=0.25)
    assert torch.equal(again.images, task.images) and torch.equal(again.targets, task.targets)


def test_tracking_trivial_predictor_is_zero_motion_and_scores_the_mean_shift():
    items = _items()
    task = make_tracking(items, canvas=32, seed=1)
    data = ImageSet(task.images, None, task.ids, task.targets)
    trivial = trivial_scores("tracking", data, data)
    assert trivial["displacement_error"] == pytest.approx(float(task.targets.norm(dim=-1).mean()), rel=1e-6)
    # shifts uniform in [-0.25, 0.25] per axis: the mean distance from zero is far from what a tracker should reach
    assert trivial["displacement_error"] > 0.12


def test_tracking_head_reads_the_displacement_from_matched_patches():
    from mimkit.methods import build_method
    from mimkit.methods.task.tracking import TrackingHead

    model = build_method(resolved(tiny_config("method.name=task", "data.task=tracking", "init=scratch")))
    assert isinstance(model.dense_head, TrackingHead)
    pred = model.predict(torch.randn(3, 2, 16, 16))  # two gray frames on the channel axis
    assert pred["displacement"].shape == (3, 2) and pred["motions"].shape == (3, 16, 2)
    torch.testing.assert_close(pred["trust"].sum(1), torch.ones(3))
    losses = model.losses(pred, {"targets": torch.zeros(3, 2)})
    torch.testing.assert_close(losses["track_loss"], pred["displacement"].abs().mean())

    # written out on a 4 x 4 grid: features that are one-hot patch identities, the second frame's grid rolled
    # one patch right, identity projections and a sharp match: every patch moves by +1/4 in x, except where the
    # roll wraps around (column 0 of frame 2 holds column 3's identity, a move of -3/4)
    dim = 16
    head = TrackingHead(dim, lambda i, o: torch.nn.Conv2d(i, o, 1))
    with torch.no_grad():
        for proj in (head.query, head.key):
            proj.weight.copy_(torch.eye(dim) * 20.0)
            proj.bias.zero_()
    ident = torch.eye(dim).T.reshape(1, dim, 4, 4)
    out = head(ident, ident.roll(1, dims=-1), patch_centres(4, 4, torch.device("cpu")))
    expected = torch.tensor([[0.25, 0.0]]).repeat(16, 1)
    expected[3::4, 0] = -0.75  # column 3 wrapped to column 0
    torch.testing.assert_close(out["motions"][0], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["displacement"][0], (out["trust"][0, :, None] * expected).sum(0), atol=1e-4, rtol=0)


def test_stacked_frames_are_normalised_with_each_frames_channel_statistics():
    from mimkit.data.transforms import eval_transform

    frames = torch.randint(0, 256, (2, 6, 8, 8), dtype=torch.uint8)  # two RGB frames on the channel axis
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    both = eval_transform(frames, 8, mean, std)
    for k in range(2):
        torch.testing.assert_close(
            both[:, 3 * k : 3 * k + 3], eval_transform(frames[:, 3 * k : 3 * k + 3], 8, mean, std)
        )
