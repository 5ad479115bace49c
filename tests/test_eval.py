"""Evaluation: weight sources, layer-wise lr decay, fine-tuning, frozen features and their cache, linear probe,
kNN, and clear errors for checkpoints that do not fit."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY, run_cli, sets, tiny_config
from mimkit.config import ConfigError, resolved
from mimkit.engine.schedule import warmup_cosine_factor
from mimkit.eval.features import cached_features, extract_features, frozen_encoder
from mimkit.eval.knn import knn_predict
from mimkit.methods.supervised import layer_id
from mimkit.weights import load_encoder_weights, resolve_source

SUP = [*TINY, "method.name=supervised", "model.global_pool=avg"]


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "mae"
    run_cli("pretrain", "--config", "mae_fmnist_tiny", "--out", str(out), *sets([*TINY, "train.steps=6"]), check=True)
    return out


def test_layer_ids_follow_the_beit_rule():
    assert layer_id("cls_token", 12) == 0 and layer_id("pos_embed", 12) == 0
    assert layer_id("patch_embed.proj.weight", 12) == 0
    assert layer_id("blocks.0.attn.qkv.weight", 12) == 1 and layer_id("blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_id("fc_norm.weight", 12) == 13 and layer_id("head.weight", 12) == 13


@pytest.mark.parametrize("family", ["vit", "beit"])
def test_layer_decay_reaches_the_optimizer_at_every_step(tmp_path, family):
    """Effective lr of every parameter = peak lr x decay^(L+1-layer) x schedule(step), checked at several steps;
    the groups come from timm's param_groups_layer_decay, the expected layers from MAE's rule written out
    (layer_id), for timm's ViT and for SimMIM's published ViT (timm's BEiT)."""
    from mimkit.engine.distributed import DistEnv
    from mimkit.engine.trainer import Engine
    from mimkit.methods import build_method
    from mimkit.training import build_stream, load_data_once

    cfg = resolved(
        tiny_config(
            *SUP[len(TINY) :],
            "method.layer_decay=0.5",
            f"model.family={family}",
            "train.steps=8",
            "train.warmup_steps=3",
            "train.min_lr=1e-5",
            "train.eval_every=100",
            "train.ckpt_every=100",
        )
    )
    env = DistEnv()
    data = load_data_once(cfg, env, lambda *_: None)
    method = build_method(cfg)
    engine = Engine(cfg, tmp_path, method, env, build_stream(cfg, data, env), {})
    depth = len(method.encoder.blocks)
    name_of = {id(p): n for n, p in method.named_parameters()}
    seen = set()
    for step in range(cfg.train.steps):
        factor = warmup_cosine_factor(step, cfg.train.steps, cfg.train.warmup_steps, 1e-5 / cfg.train.lr)
        for group in engine.optimizer.param_groups:
            for p in group["params"]:
                name = name_of[id(p)].removeprefix("encoder.")
                expected = cfg.train.lr * 0.5 ** (depth + 1 - layer_id(name, depth)) * factor
                assert group["lr"] == pytest.approx(expected, rel=1e-9), (step, name)
                assert group["weight_decay"] == (
                    0.0
                    if p.ndim <= 1 or "token" in name or "pos_embed" in name or "relative_position" in name
                    else cfg.train.weight_decay
                )
                seen.add(name)
        engine.train_step(step)
    assert len(seen) == len([n for n, p in method.named_parameters() if p.requires_grad])


def test_finetune_from_run_and_from_export(tmp_path, mae_run):
    ft = [
        "data.name=synthetic",
        "train.epochs=null",
        "train.steps=6",
        "train.eval_every=3",
        "train.ckpt_every=3",
        "train.tensorboard=false",
        "train.batch_size=16",
        "train.eval_samples=32",
        "data.synthetic_size=128",
        "train.keep_last=5",
    ]
    proc = run_cli("finetune", "--init", str(mae_run), "--out", str(tmp_path / "ft"), *sets(ft), check=True)
    assert "fresh: fc_norm.weight, fc_norm.bias, head.weight, head.bias" in proc.stdout
    results = json.loads((tmp_path / "ft/results.json").read_text())
    assert 0 <= results["final_heldout_top1"] <= 100 and results["final_heldout_top5"] >= results["final_heldout_top1"]
    assert results["init"].startswith("mae run")
    # the encoder blocks started from the MAE weights
    from safetensors.torch import load_file

    from mimkit import load

    mae = load(mae_run)
    first = load_file(str(tmp_path / "ft/checkpoints/step-0000003/model.safetensors"))
    w0 = mae.encoder.blocks[0].attn.qkv.weight
    assert (first["encoder.blocks.0.attn.qkv.weight"] - w0).abs().max() < 0.05  # 3 small steps from the MAE init
    run_cli("export", str(mae_run), "--out", str(tmp_path / "enc.safetensors"), check=True)
    run_cli(
        "finetune", "--init", str(tmp_path / "enc.safetensors"), "--out", str(tmp_path / "ft2"), *sets(ft), check=True
    )
    assert json.loads((tmp_path / "ft2/results.json").read_text())["init"].startswith("exported encoder")


def test_supervised_baseline_trains_from_scratch_with_mixup_and_randaug(tmp_path):
    from mimkit.training import pretrain

    cfg = tiny_config(
        *SUP[len(TINY) :],
        "init=scratch",
        "method.mixup=0.8",
        "method.cutmix=1.0",
        "method.randaug=rand-m9-mstd0.5-inc1",
        "train.steps=4",
    )
    results = pretrain(cfg, tmp_path / "sup")
    assert results["init"] == "random initialisation" and math.isfinite(results["final_heldout_loss"])
    records = [json.loads(line) for line in (tmp_path / "sup/metrics.jsonl").read_text().splitlines()]
    assert any("top1" in r for r in records if r.get("split") == "heldout")
    assert not (tmp_path / "sup/figures/reconstructions.png").exists()  # Method.reconstructs is False
    bad = run_cli("reconstruct", str(tmp_path / "sup"))
    assert bad.returncode == 2 and "does not reconstruct" in bad.stderr and "Traceback" not in bad.stderr


def test_randaugment_is_keyed_per_image():
    from mimkit.data.transforms import RandAugmentBatch

    images = (torch.rand(6, 1, 16, 16) * 255).to(torch.uint8)
    ra = RandAugmentBatch("rand-m9-mstd0.5-inc1", [0.5])
    keys = torch.arange(6)
    a, b = ra(images, keys), ra(images, keys)
    assert torch.equal(a, b)
    assert not torch.equal(a, ra(images, keys + 100))
    assert a.shape == images.shape and a.dtype == torch.uint8


def test_randaugment_in_worker_processes_matches_in_process_and_streams_ahead():
    """Two persistent workers give the in-process result, through shared slots (a batch larger than the first
    goes through the pipes); a fine-tuning stream with them hands out the same batches, the next one already
    started, and jumps (resume) still get the right batch."""
    import numpy as np

    from mimkit.config import resolved
    from mimkit.data.datasets import build_data
    from mimkit.data.transforms import RandAugmentBatch
    from mimkit.engine.distributed import DistEnv
    from mimkit.training import build_stream

    images = (torch.rand(7, 3, 16, 16) * 255).to(torch.uint8)
    keys = torch.arange(7) * 13
    pooled = RandAugmentBatch("rand-m9-mstd0.5-inc1", [0.5, 0.4, 0.3], workers=2)
    np_state = np.random.get_state()[1].copy()
    here = RandAugmentBatch("rand-m9-mstd0.5-inc1", [0.5, 0.4, 0.3])
    try:
        assert torch.equal(pooled(images, keys), here(images, keys))
        assert (np.random.get_state()[1] == np_state).all()  # the in-process path leaves numpy's RNG alone
        assert pooled._slots is not None and isinstance(pooled.submit(images, keys), tuple)  # shared, not piped
        more = (torch.rand(9, 3, 16, 16) * 255).to(torch.uint8)
        assert torch.equal(pooled(more, torch.arange(9)), here(more, torch.arange(9)))  # too big for a slot
        assert torch.equal(pooled(images[:5], keys[:5]), here(images[:5], keys[:5]))
    finally:
        pooled.close()
    streams = {}
    for workers in (0, 2):
        cfg = resolved(
            tiny_config(
                "method.name=supervised",
                "method.randaug=rand-m9-mstd0.5-inc1",
                f"data.num_workers={workers}",
                "model.num_classes=10",
            )
        )
        streams[workers] = build_stream(cfg, build_data(cfg, lambda *_: None), DistEnv())
    fast = streams[2]
    try:
        for step in (0, 1, 2, 6, 7, 1, 2):
            expected, got = streams[0].get(step, 0), fast.get(step, 0)
            assert torch.equal(got["images"], expected["images"]) and torch.equal(got["labels"], expected["labels"])
            assert list(fast._pending) == [step + 1]  # the next micro-batch is already in the workers
    finally:
        fast.close()


def test_randaugment_waits_for_a_dropped_batch_before_reusing_its_slot():
    import time
    from concurrent.futures import ThreadPoolExecutor

    from mimkit.data.transforms import RandAugmentBatch

    images = (torch.rand(4, 1, 16, 16) * 255).to(torch.uint8)
    ra = RandAugmentBatch("rand-m9-mstd0.5-inc1", [0.5], workers=1)
    try:
        ra(images, torch.arange(4))  # makes the slots
        done: list[int] = []
        with ThreadPoolExecutor(1) as pool:  # stands in for a worker still writing the next slot
            ra._busy[ra._slots.key(ra._turn)] = [pool.submit(lambda: (time.sleep(0.3), done.append(1)))]
            ra._slot(images.numpy())
            assert done == [1]
    finally:
        ra.close()


def test_mismatched_checkpoint_names_the_keys(tmp_path, mae_run):
    cfg = resolved(tiny_config("model.name=mim_vit_pico"))
    from mimkit.models.encoder import create_encoder

    source = resolve_source(str(mae_run), cfg)
    encoder = create_encoder(cfg, fixed_sincos=False)  # pico (96 wide, 6 blocks) vs the femto source
    with pytest.raises(ConfigError, match=r"shape mismatch: .*cls_token"):
        load_encoder_weights(encoder, source.state, "init")
    pruned = {k: v for k, v in source.state.items() if not k.startswith("blocks.2.")}
    femto = create_encoder(resolved(tiny_config()), fixed_sincos=False)
    with pytest.raises(ConfigError, match=r"missing from the checkpoint: blocks\.2\."):
        load_encoder_weights(femto, pruned, "init")
    bad = run_cli("finetune", "--init", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), *sets(TINY))
    assert bad.returncode == 2 and "not a run directory" in bad.stderr and "Traceback" not in bad.stderr
    offline = run_cli("finetune", "--init", "timm:vit_tiny_patch16_224", "--out", str(tmp_path / "y"), *sets(TINY))
    assert offline.returncode == 2 and "not available locally" in offline.stderr


def test_frozen_encoder_is_unchanged_and_cache_matches_recompute(tmp_path, mae_run):
    from mimkit.data.datasets import build_data
    from mimkit.eval.linprobe import train_head

    cfg = resolved(tiny_config("probe.epochs=3", "probe.warmup_epochs=1", "probe.batch_size=32"))
    source = resolve_source(str(mae_run), cfg)
    data = build_data(cfg, lambda *_: None)
    encoder = frozen_encoder(cfg, source, torch.device("cpu"))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    feats, reused = cached_features(
        encoder, data.train, cfg, "token", tmp_path / "f/train.safetensors", torch.device("cpu")
    )
    assert not reused
    again, reused = cached_features(
        encoder, data.train, cfg, "token", tmp_path / "f/train.safetensors", torch.device("cpu")
    )
    assert reused and torch.equal(feats, again)
    torch.testing.assert_close(feats, extract_features(encoder, data.train, cfg, "token", torch.device("cpu")))
    avg, reused = cached_features(
        encoder, data.train, cfg, "avg", tmp_path / "f/train.safetensors", torch.device("cpu")
    )
    assert not reused and not torch.allclose(avg, feats)  # another pooling invalidates the cache
    held = extract_features(encoder, data.heldout, cfg, "token", torch.device("cpu"))
    head, history = train_head(feats, data.train.labels, held, data.heldout.labels, 10, cfg)
    assert len(history) == 3
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_linprobe_and_knn_cli(tmp_path, mae_run):
    probe = ["data.name=synthetic", "data.synthetic_size=128", "probe.epochs=4", "probe.warmup_epochs=1"]
    lin = run_cli("linprobe", "--init", str(mae_run), "--out", str(tmp_path / "lin"), *sets(probe), check=True)
    res = json.loads((tmp_path / "lin/linprobe.json").read_text())
    assert (
        res["epochs"] == 4
        and 0 <= res["top1"] <= 100
        and f"top-1                        {res['top1']:.2f}%" in lin.stdout
    )
    assert "features (train) batch 1/1" in lin.stdout  # extraction shows progress
    assert (tmp_path / "lin/checkpoints/last/head.safetensors").is_file()
    assert res["figure"].endswith("figures/linprobe_curves.png") and f"figures {res['figure']}" in " ".join(
        lin.stdout.split()
    )
    run_cli("knn", "--init", str(mae_run), "--out", str(tmp_path / "lin"), *sets(probe), check=True)
    knn = json.loads((tmp_path / "lin/knn.json").read_text())
    assert knn["features_reused"] is True and knn["k"] == 20  # same encoder, data and pooling: cache hit
    # the two commands' results sit side by side, and both log to metrics.jsonl; a re-run replaces only its own
    assert json.loads((tmp_path / "lin/linprobe.json").read_text()) == res
    run_cli("knn", "--init", str(mae_run), "--out", str(tmp_path / "lin"), *sets(probe), check=True)
    events = [json.loads(line) for line in (tmp_path / "lin/metrics.jsonl").read_text().splitlines()]
    assert [e["command"] for e in events] == ["linprobe"] * 4 + ["knn"]
    assert events[-1]["top1"] == knn["top1"] and events[-1]["k"] == 20


def test_knn_on_a_toy_set_with_a_known_answer():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    query = torch.tensor([[1.0, 0.05], [0.05, 1.0], [-1.0, 0.1]])
    scores = knn_predict(train, labels, query, num_classes=3, k=2, temperature=0.07)
    assert scores.argmax(1).tolist() == [0, 1, 2]
    # weights are exp(cos / T) of the k nearest: check one score exactly
    q = torch.nn.functional.normalize(query[:1], dim=1)
    t = torch.nn.functional.normalize(train[:2], dim=1)
    assert scores[0, 0].item() == pytest.approx((q @ t.T / 0.07).exp().sum().item(), rel=1e-5)
    assert scores[0, 2].item() == 0.0


def mae_lars_step(params, grads, state, lr, weight_decay, momentum=0.9, trust=0.001):
    """MAE's LARS (util/lars.py of the MAE code) written out: every matrix's update (gradient + weight decay) is
    scaled by trust * ||w|| / ||update||; 1-D parameters are plain momentum SGD without decay."""
    for i, (p, g) in enumerate(zip(params, grads)):
        update = g.clone()
        if p.ndim > 1:
            update = update + weight_decay * p
            w_norm, u_norm = p.norm(), update.norm()
            if w_norm > 0 and u_norm > 0:
                update = update * (trust * w_norm / u_norm)
        state[i] = update if i not in state else state[i] * momentum + update
        p -= lr * state[i]


def test_the_probe_optimizer_is_maes_lars(tmp_path):
    """The probe's LARS (timm's Lars with the groups linprobe builds) takes MAE's steps at the probe's weight decay
    0; several steps, so momentum and the changing norms are covered. Float tolerance: two summation orders."""
    from mimkit.eval.linprobe import train_head

    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    cfg = tiny_config("probe.epochs=3", "probe.batch_size=16", "probe.warmup_epochs=0", "probe.base_lr=0.5")
    head, _ = train_head(x, y, x[:8], y[:8], 3, cfg)
    # the same steps by hand: the same initial head, data order and schedule
    from mimkit.engine.schedule import warmup_cosine_factor
    from mimkit.eval.linprobe import probe_head

    torch.manual_seed(cfg.seed)
    ref = probe_head(6, 3)
    gen = torch.Generator().manual_seed(cfg.seed)
    lr, state, step, total = 0.5 * 16 / 256, {}, 0, 3 * 4
    for _ in range(3):
        order = torch.randperm(64, generator=gen)
        for i in range(4):
            idx = order[i * 16 : (i + 1) * 16]
            ref.zero_grad()
            torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            params = [ref[1].weight, ref[1].bias]
            with torch.no_grad():
                rate = lr * warmup_cosine_factor(step, total, 0, 0.0)
                mae_lars_step(params, [q.grad for q in params], state, rate, weight_decay=0.0)
            step += 1
    for mine, theirs in zip(head.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    assert not torch.equal(head[1].weight, probe_head(6, 3)[1].weight)  # it did train


def test_compare_runs_the_matrix_and_resumes_without_rerunning(tmp_path, mae_run):
    args = [
        "compare",
        "--init",
        str(mae_run),
        "--init",
        "rand=scratch",
        "--out",
        str(tmp_path / "cmp"),
        "--tasks",
        "classification,localization",
        "--no-baselines",  # test_baselines.py covers them
        *sets(["data.name=synthetic", "data.synthetic_size=64", "model.name=mim_vit_femto"]),
        "--set-probe",
        "probe.epochs=2",
        "--set-probe",
        "probe.warmup_epochs=0",
        "--set-finetune",
        "train.epochs=null",
        "--set-finetune",
        "train.steps=2",
        "--set-finetune",
        "train.batch_size=16",
        "--set-finetune",
        "train.eval_samples=16",
    ]
    first = run_cli(*args, check=True)
    assert first.stdout.count("running") == 10  # per model: 3 classification cells + 2 localisation (no kNN)
    rows = json.loads((tmp_path / "cmp/results.json").read_text())
    assert {(r["model"], r["protocol"], r["task"]) for r in rows} == {
        (m, p, t)
        for m in ("mae", "rand")
        for t in ("classification", "localization")
        for p in ("knn", "linprobe", "finetune")
        if not (t == "localization" and p == "knn")
    }
    assert {r["source"] for r in rows if r["model"] == "rand"} == {f"scratch:{mae_run}"}  # the mae run's shape
    loc = [r for r in rows if r["task"] == "localization"]
    assert all(r["metric"] == "mean_iou" and 0 <= r["value"] <= 1 for r in loc)
    frozen = json.loads(
        (tmp_path / "cmp/cells/mae__linprobe__localization/config.yaml").read_text().split("freeze: ")[1].split()[0]
    )
    assert frozen is True
    table = (tmp_path / "cmp/results.md").read_text()
    assert "| mae |" in table and "| rand |" in table and "# Semantic vs geometric tasks" in table
    assert (
        (tmp_path / "cmp/results.csv").read_text().startswith("model,source,protocol,task,seed,baseline,metric,value")
    )
    stamp = (tmp_path / "cmp/cells/mae__finetune__classification/results.json").stat().st_mtime_ns
    again = run_cli(*args, check=True)
    assert again.stdout.count("skipped") == 10 and "running" not in again.stdout
    assert (tmp_path / "cmp/cells/mae__finetune__classification/results.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "cmp/results.json").read_text()) == rows


def test_compare_cells_survive_new_presentation_keys_but_not_a_changed_setting(tmp_path):
    """A cell recorded before train.loggers existed, or with another log cadence, is not re-run; another lr is."""
    import hashlib

    from mimkit.eval.compare import ADDED_KEYS, config_hash, recorded_row

    cfg = tiny_config()
    old = cfg.to_dict()
    old["train"] = {k: v for k, v in old["train"].items() if k not in ADDED_KEYS}  # as hashed before the keys came
    marker = tmp_path / "cell.json"
    marker.write_text(
        json.dumps(
            {
                "row": {"value": 1},
                "config_hash": hashlib.sha1(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12],
            }
        )
    )
    assert recorded_row(marker, cfg) == {"value": 1}
    marker.write_text(json.dumps({"config_hash": config_hash(cfg), "row": {"value": 1}}))
    assert recorded_row(marker, tiny_config("train.log_every=7", "train.loggers=[tensorboard]")) == {"value": 1}
    assert recorded_row(marker, tiny_config("train.base_lr=0.5")) is None
    assert recorded_row(tmp_path / "missing.json", cfg) is None


def test_compare_cells_of_a_weights_file_are_keyed_by_its_content_and_old_markers_are_rekeyed(tmp_path):
    """An exported encoder restored into another checkout is the same cell (its content, not its path, keys it), a
    changed file is not; a marker written when the path keyed it still matches and is rewritten with today's hash.
    Run directories keep their path as their identity."""
    from mimkit.eval.compare import config_hash, recorded_row

    here, there = tmp_path / "here" / "enc.safetensors", tmp_path / "there" / "moved.safetensors"
    for path in (here, there):
        path.parent.mkdir()
        path.write_bytes(b"the same weights")
    assert config_hash(tiny_config(f"init={here}")) == config_hash(tiny_config(f"init={there}"))
    assert config_hash(tiny_config(f"init=timm:vit_tiny@{here}")) == config_hash(
        tiny_config(f"init=timm:vit_tiny@{there}")
    )
    assert config_hash(tiny_config(f"init=timm:vit_tiny@{here}")) != config_hash(tiny_config(f"init={here}"))
    assert config_hash(tiny_config("init=timm:vit_tiny")) != config_hash(tiny_config("init=timm:vit_small"))
    run_a, run_b = tmp_path / "run_a", tmp_path / "run_b"
    run_a.mkdir(), run_b.mkdir()
    assert config_hash(tiny_config(f"init={run_a}")) != config_hash(tiny_config(f"init={run_b}"))

    cfg = tiny_config(f"init={here}")
    marker = tmp_path / "cell.json"
    marker.write_text(json.dumps({"config_hash": config_hash(cfg, by_content=False), "row": {"value": 3}}))
    assert recorded_row(marker, cfg) == {"value": 3}
    assert json.loads(marker.read_text()) == {"config_hash": config_hash(cfg), "row": {"value": 3}}  # re-keyed
    assert recorded_row(marker, tiny_config(f"init={there}")) == {"value": 3}  # another checkout's path

    there.write_bytes(b"other weights")
    assert recorded_row(marker, tiny_config(f"init={there}")) is None


def test_compare_cells_recorded_before_the_probe_lr_search_existed_still_match_at_its_defaults(tmp_path):
    """A marker hashed before probe.lr_grid / probe.val_fraction existed matches a config that leaves them at their
    defaults (the same numbers), not one that searches an lr."""
    import hashlib

    from mimkit.eval.compare import PRESENTATION_KEYS, recorded_row

    def hashed_before(cfg):
        tree = cfg.to_dict()
        tree["train"] = {k: v for k, v in tree["train"].items() if k not in PRESENTATION_KEYS}
        tree["probe"] = {k: v for k, v in tree["probe"].items() if k not in ("lr_grid", "val_fraction")}
        del tree["method"]["fixed_masks"]  # added after the probe keys: not in a config hashed before them
        return hashlib.sha1(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]

    cfg = tiny_config()
    marker = tmp_path / "cell.json"
    marker.write_text(json.dumps({"config_hash": hashed_before(cfg), "row": {"value": 2}}))
    assert recorded_row(marker, cfg) == {"value": 2}
    assert recorded_row(marker, tiny_config("probe.lr_grid=[0.1,1.0]")) is None
    assert recorded_row(marker, tiny_config("probe.val_fraction=0.2")) is None


def test_compare_takes_a_recipe_per_protocol():
    """--finetune-config puts the tuned schedule under every fine-tuning and task cell, exactly as the recipe plus
    the cell's own settings (so cells recorded with the same settings spelled out as --set-finetune are reused);
    the probes keep theirs unless --probe-config names another."""
    from mimkit.config import load_config
    from mimkit.eval.compare import Cell, cell_config, config_hash, protocol_recipes

    recipes = protocol_recipes(finetune="finetune_fmnist_pico")
    cell = Cell("s", "scratch", "finetune", "classification", 2)
    ft = cell_config(cell, ["data.fraction=0.1"], {}, recipes=recipes)
    assert (
        ft.to_dict()
        == load_config(
            "finetune_fmnist_pico", ["init=scratch", "method.name=supervised", "data.fraction=0.1", "seed=2"]
        ).to_dict()
    )
    assert (ft.train.epochs, ft.train.batch_size, ft.method.layer_decay) == (15, 128, 1.0)
    spelled_out = [
        *("train.epochs=15", "train.warmup_epochs=1", "train.batch_size=128", "train.base_lr=2e-3"),
        *("method.layer_decay=1.0", "model.drop_path=0.0", "data.crop_scale=[0.8,1.0]", "train.eval_samples=2000"),
    ]
    tiny = cell_config(cell, ["data.fraction=0.1"], {"finetune": spelled_out})
    assert config_hash(tiny) == config_hash(ft)
    task = cell_config(Cell("s", "scratch", "linprobe", "depth"), [], {"finetune": ["train.epochs=4"]}, recipes=recipes)
    assert (task.train.batch_size, task.train.epochs, task.model.freeze) == (128, 4, True)
    knn = cell_config(Cell("s", "scratch", "knn", "classification"), [], {}, recipes=recipes)
    assert knn.to_dict() == cell_config(Cell("s", "scratch", "knn", "classification"), [], {}).to_dict()
    other_probe = protocol_recipes(probe="finetune_fmnist_pico")
    probe = cell_config(Cell("s", "scratch", "linprobe", "classification"), [], {}, recipes=other_probe)
    assert probe.data.crop_scale == [0.8, 1.0]  # the named recipe, not probe_fmnist


def test_compare_with_an_unknown_recipe_stops_before_any_cell(tmp_path, capsys):
    from mimkit.cli import main

    for flag in ("--finetune-config", "--probe-config"):
        code = main(["compare", "--init", "a=scratch", "--out", str(tmp_path / "cmp"), flag, "no_such_recipe"])
        err = capsys.readouterr().err
        assert code == 2 and "no_such_recipe" in err and "Traceback" not in err
        assert not (tmp_path / "cmp/cells").exists()


def test_compare_tables_only_rebuilds_the_tables_from_every_finished_cell(tmp_path):
    """A comparison run in pieces (here: a second invocation with one more model) writes tables of its own cells
    only; --tables-only rebuilds them from every marker under --out, running nothing, and leaves out a cell with
    no marker yet (still running). A corrupt marker or an empty directory is refused by name."""
    cells = tmp_path / "cmp" / "cells"

    def marker(name, model, protocol, value, seed=0, baseline=False):
        row = dict(model=model, source="", protocol=protocol, task="classification", seed=seed, baseline=baseline)
        (cells / name).mkdir(parents=True)
        (cells / name / "cell.json").write_text(
            json.dumps({"config_hash": "x", "row": {**row, "metric": "top1", "value": value}})
        )

    marker("pixels__knn__classification", "pixels", "knn", 85.0, baseline=True)
    marker("mae__knn__classification__seed1", "mae", "knn", 80.0, seed=1)
    marker("mae__knn__classification", "mae", "knn", 78.0)
    marker("mae_ep100__finetune__classification", "mae_ep100", "finetune", 90.0)
    (cells / "scratch__finetune__classification").mkdir()  # running: no marker
    out = run_cli("compare", "--out", str(tmp_path / "cmp"), "--tables-only", check=True).stdout
    assert "4 finished cells" in out
    rows = json.loads((tmp_path / "cmp/results.json").read_text())
    assert [(r["model"], r["seed"]) for r in rows] == [("mae", 0), ("mae_ep100", 0), ("mae", 1), ("pixels", 0)]
    table = (tmp_path / "cmp/results.md").read_text()
    assert "| mae | 79.00 ± 1.41 † |  |" in table and "| mae_ep100 |  | 90.00 |" in table
    assert "| *pixels* (baseline) | 85.00 |  |" in table

    (cells / "mae__knn__classification" / "cell.json").write_text("{not json")
    bad = run_cli("compare", "--out", str(tmp_path / "cmp"), "--tables-only")
    assert bad.returncode != 0 and "mae__knn__classification/cell.json is not a cell marker" in bad.stderr
    (cells / "mae__knn__classification" / "cell.json").write_text('{"config_hash": "x", "row": {"model": "mae"}}')
    bad = run_cli("compare", "--out", str(tmp_path / "cmp"), "--tables-only")
    assert bad.returncode != 0 and "lacks ['metric', 'protocol', 'task', 'value']" in bad.stderr
    empty = run_cli("compare", "--out", str(tmp_path / "none"), "--tables-only")
    assert empty.returncode != 0 and "no finished cell under" in empty.stderr
    no_init = run_cli("compare", "--out", str(tmp_path / "cmp2"))
    assert no_init.returncode != 0 and "needs at least one --init" in no_init.stderr
