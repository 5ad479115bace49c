"""data.name=webdataset: shard patterns and their errors, the tar index and its cache, the shuffle buffer, batches as a
pure function of (seed, epoch, rank, world size, step) (determinism, resume, ranks, decode processes), unreadable
images, labels, held-out shards, config errors and an end-to-end `mimkit pretrain` on tiny shards."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, sets, tiny_config
from mimkit.cli import main
from mimkit.config import ConfigError, load_config, resolved
from mimkit.data.datasets import build_data
from mimkit.data.folder import FolderError
from mimkit.data.transforms import BatchAugment
from mimkit.data.webdataset import (
    HELDOUT_ID_OFFSET,
    ID_STRIDE,
    ShardError,
    ShardSet,
    ShardStream,
    expand_braces,
    index_shards,
    load_index,
    require_in_memory,
    shard_paths,
    shuffle_buffer_order,
    write_shards,
    write_shards_from,
)
from mimkit.eval.probe_common import probe_setup

PER_SHARD = 10
SHARDS = 6
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Shard indexes go to this test's tmp directory, never to ~/.cache."""
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))


def _quiet(*_args):
    pass


def _images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size), dtype=np.uint8)


@pytest.fixture
def shard_dir(tmp_path) -> Path:
    """6 shards x 10 labelled 16 px gray images."""
    write_shards(_images(SHARDS * PER_SHARD), np.arange(SHARDS * PER_SHARD) % 10, tmp_path / "shards", PER_SHARD)
    return tmp_path / "shards"


def _shard_set(root, workers: int = 0, buffer: int = 8) -> ShardSet:
    return ShardSet(index_shards(shard_paths(str(root)), log=_quiet), 18, 1, workers, buffer)


def _stream(
    data: ShardSet, rank: int = 0, world: int = 1, micro: int = 4, accum: int = 1, seed: int = 0, log=_quiet
) -> ShardStream:
    augment = BatchAugment(16, (0.2, 1.0), (3 / 4, 4 / 3), True, [0.5], [0.25], seed)
    return ShardStream(data, augment, micro, accum, rank, world, seed, CPU, log=log)


def _same(a: dict, b: dict) -> bool:
    return torch.equal(a["ids"], b["ids"]) and torch.equal(a["images"], b["images"]) and a["epoch"] == b["epoch"]


def _epoch_ids(stream: ShardStream, epoch: int) -> list[int]:
    first = epoch * stream.batches_per_epoch
    return [i for step in range(first, first + stream.batches_per_epoch) for i in stream.get(step, 0)["ids"].tolist()]


# ---------------------------------------------------------------------------------------------------- patterns
def test_expand_braces_keeps_zero_padding_and_order():
    assert expand_braces("/x/train-{000008..000010}.tar") == [f"/x/train-0000{n:02d}.tar" for n in (8, 9, 10)]
    assert expand_braces("a{8..10}") == ["a8", "a9", "a10"]
    assert expand_braces("{0..1}-{00..01}") == ["0-00", "0-01", "1-00", "1-01"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ShardError, match="counts down"):
        expand_braces("a{3..1}")


def test_shard_paths_from_directory_glob_brace_and_file(shard_dir):
    listed = shard_paths(str(shard_dir))
    assert [p.name for p in listed] == [f"shard-{n:06d}.tar" for n in range(SHARDS)]
    assert shard_paths(str(shard_dir / "shard-*.tar")) == listed
    assert shard_paths(str(shard_dir / "shard-{000000..000005}.tar")) == listed
    assert shard_paths(str(shard_dir / "shard-000002.tar")) == [listed[2]]


def test_shard_path_errors_name_the_path_and_the_fix(tmp_path, shard_dir):
    assert issubclass(ShardError, FolderError)  # the CLI reports FolderError without a traceback, exit 2
    with pytest.raises(ShardError, match="nowhere.*brace pattern"):
        shard_paths(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="without .tar shards"):
        shard_paths(str(tmp_path / "empty"))
    with pytest.raises(ShardError, match="1 shard.*shard-000006.tar"):
        shard_paths(str(shard_dir / "shard-{000000..000006}.tar"))
    with pytest.raises(ShardError, match="not found"):
        shard_paths(str(tmp_path / "*.tar"))


# ---------------------------------------------------------------------------------------------------- index
def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _png(value: int, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_index_groups_members_by_key_and_is_cached(tmp_path):
    path = _tar(
        tmp_path / "s.tar",
        [
            ("a/001.jpg", _png(10)),
            ("a/001.cls", b" 3\n"),
            ("a/001.json", b"{}"),
            ("002.json", b"{}"),  # no image: not a sample
            ("003.seg.png", _png(20)),
            ("003.PNG", _png(30)),  # seg.png: another field
            ("003.jpg", _png(35)),
            ("004.webp", _png(40)),
        ],
    )  # the first image wins
    index, cached = load_index(path)
    assert not cached and len(index) == 3
    assert index.labels.tolist() == [3, -1, -1]
    with open(path, "rb") as fh:  # the offsets point at the image bytes
        fh.seek(int(index.offsets[1]))
        assert fh.read(int(index.sizes[1])) == _png(30)
    again, cached = load_index(path)
    assert cached and np.array_equal(again.offsets, index.offsets)
    os.utime(path, ns=(1, 1))  # a changed shard (mtime) is indexed again
    assert not load_index(path)[1]
    assert len(list((tmp_path / "cache" / "shard-index").glob("*.npz"))) == 2


def test_index_errors_for_non_tar_and_bad_label(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"\x1f\x8b not a plain tar" * 40)
    with pytest.raises(ShardError, match="x.tar.*uncompressed"):
        load_index(tmp_path / "x.tar")
    _tar(tmp_path / "y.tar", [("1.png", _png(1)), ("1.cls", b"cat")])
    with pytest.raises(ShardError, match="1.cls.*integer"):
        load_index(tmp_path / "y.tar")


def test_index_counts_and_labels_from_cls(shard_dir):
    data = _shard_set(shard_dir)
    assert data.counts.tolist() == [PER_SHARD] * SHARDS and len(data) == SHARDS * PER_SHARD
    assert data.labels.tolist() == [i % 10 for i in range(SHARDS * PER_SHARD)]
    ids = data.ids(np.array([0, PER_SHARD + 3]))
    assert ids.tolist() == [2 * ID_STRIDE, 3 * ID_STRIDE + 3]
    batch = _stream(data).get(0, 0)
    assert torch.equal(batch["labels"], (batch["ids"] % ID_STRIDE + (batch["ids"] // ID_STRIDE - 2) * PER_SHARD) % 10)


def test_no_cls_members_means_no_labels(tmp_path):
    write_shards(_images(20), None, tmp_path / "s", 10)
    data = _shard_set(tmp_path / "s")
    assert data.labels is None and "labels" not in _stream(data).get(0, 0)


# ---------------------------------------------------------------------------------------------------- order
def test_shuffle_buffer_order_is_a_seeded_permutation():
    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(3)

    order = shuffle_buffer_order(50, 8, gen())
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    assert np.array_equal(order, shuffle_buffer_order(50, 8, gen()))
    assert np.array_equal(order[:20], shuffle_buffer_order(50, 8, gen(), limit=20))
    assert shuffle_buffer_order(5, 1, gen()).tolist() == list(range(5))  # a buffer of one keeps the order
    assert max(order[:10]) < 8 + 10  # output k comes from the first size + k samples: a local shuffle
    assert sorted(shuffle_buffer_order(5, 100, gen()).tolist()) == list(range(5))


def test_same_seed_and_epoch_give_identical_batches_other_epochs_other_orders(shard_dir):
    data = _shard_set(shard_dir)
    a, b = _stream(data), _stream(data)
    assert a.batches_per_epoch == SHARDS * PER_SHARD // 4 and a.images_per_epoch == 60
    assert all(_same(a.get(step, 0), b.get(step, 0)) for step in range(a.batches_per_epoch))
    epoch0, epoch1 = _epoch_ids(a, 0), _epoch_ids(a, 1)
    assert sorted(epoch0) == sorted(epoch1) and len(set(epoch0)) == 60  # every sample once per epoch
    assert epoch0 != epoch1
    assert a.epoch_of(a.batches_per_epoch) == 1 and a.get(a.batches_per_epoch, 0)["epoch"] == 1
    other_seed = _stream(data, seed=1)
    assert _epoch_ids(other_seed, 0) != epoch0


def test_resume_at_step_k_reads_what_an_unbroken_run_read(shard_dir):
    """accum 2 x micro 4 over 60 samples: 15 micro-batches per epoch; steps 5..9 cross into epoch 1. The resumed
    stream decodes in 2 worker processes, the unbroken one in the caller: the same batches."""
    unbroken = _stream(_shard_set(shard_dir), accum=2)
    seen = {(step, micro): unbroken.get(step, micro) for step in range(10) for micro in range(2)}
    with _stream(_shard_set(shard_dir, workers=2), accum=2) as resumed:
        for step in range(5, 10):
            for micro in range(2):
                assert _same(resumed.get(step, micro), seen[(step, micro)]), (step, micro)
        assert resumed._pool is not None
    assert resumed._finalizer is not None and not resumed._finalizer.alive  # close() stopped the workers


def test_decode_workers_hand_pixels_back_through_shared_slots_and_jumps_are_safe(shard_dir):
    """Only the `readable` flags travel through the pool's pipes; jumping (resume) waits out work already writing
    into a slot before that slot is reused, so every batch is the in-process one."""
    unbroken = _stream(_shard_set(shard_dir))
    expected = {step: unbroken.get(step, 0) for step in range(15)}
    with _stream(_shard_set(shard_dir, workers=2)) as pooled:
        assert pooled._slots is not None
        assert all(f.result().dtype == bool for f in pooled._submit(0))
        for step in (0, 1, 9, 10, 2, 3, 14, 4):
            assert _same(pooled.get(step, 0), expected[step]), step


def test_dropping_stale_work_waits_for_what_is_already_running():
    """A jump drops the prefetched batches: queued work is cancelled, running work (writing into a shared slot
    that is about to be handed out again) is waited for."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from mimkit.data.webdataset.stream import _drop

    done: list[int] = []
    started = threading.Event()  # not a sleep: on a busy machine the pool may not have started the task yet
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: (started.set(), time.sleep(0.3), done.append(1)))
        queued = pool.submit(done.append, 2)
        assert started.wait(30)
        _drop([running, queued])
        assert done == [1] and queued.cancelled()


def test_two_ranks_see_disjoint_samples_and_the_same_number_of_batches(shard_dir):
    data = _shard_set(shard_dir)
    ranks = [_stream(data, rank=r, world=2) for r in range(2)]
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch == 3 * PER_SHARD // 4
    for epoch in range(2):
        ids = [set(_epoch_ids(stream, epoch)) for stream in ranks]
        assert not ids[0] & ids[1]
        shards = [{i // ID_STRIDE for i in s} for s in ids]  # whole shards are dealt to ranks
        assert not shards[0] & shards[1]
    with pytest.raises(ConfigError, match="6 training shard.*7 processes"):
        _stream(data, world=7)


def test_uneven_shards_epoch_is_what_every_rank_is_sure_of(tmp_path):
    write_shards(_images(25), None, tmp_path / "s", 10)  # 10, 10, 5
    data = _shard_set(tmp_path / "s")
    assert data.per_rank_samples(1) == 25 and data.per_rank_samples(2) == 5 and data.per_rank_samples(3) == 5
    assert _stream(data, world=2, micro=2).batches_per_epoch == 2
    with pytest.raises(ConfigError, match="fewer than one batch"):
        _stream(data, world=2, micro=8)


# ---------------------------------------------------------------------------------------------------- unreadable
def _folder_with_a_corrupt_image(root: Path) -> Path:
    """11 readable images in two class folders, and one .jpg that is not an image."""
    for i in range(11):
        cls = root / f"class{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 24, 3), 10 * i, dtype=np.uint8)).save(cls / f"{i:02d}.png")
    (root / "class0" / "05.jpg").write_bytes(b"not an image at all")
    return root


def test_unreadable_image_is_replaced_counted_and_logged(tmp_path):
    paths = write_shards_from(str(_folder_with_a_corrupt_image(tmp_path / "imgs")), tmp_path / "s", per_shard=5)
    assert len(paths) == 3
    data = _shard_set(tmp_path / "s")
    assert len(data) == 12 and data.labels is not None  # class folders became .cls labels
    lines: list[str] = []
    stream = _stream(data, micro=4, log=lines.append)
    batches = [stream.get(step, 0) for step in range(stream.batches_per_epoch)]  # 3 batches: every sample
    assert all(b["images"].shape == (4, 1, 16, 16) for b in batches)
    ids = [i for b in batches for i in b["ids"].tolist()]
    assert stream.skipped == 1 and len(set(ids)) == 11  # the unreadable one's slot holds a batch-mate
    assert len(lines) == 1 and "1 unreadable" in lines[0] and ".jpg" in lines[0]
    again = _stream(data, micro=4)  # and a second run reads the same batches
    assert all(_same(again.get(step, 0), b) for step, b in enumerate(batches))
    held, skipped = data.decode(np.arange(len(data)))
    assert len(held) == 11 and len(skipped) == 1 and skipped[0].endswith(".jpg")


def test_epochs_count_the_streams_epoch(tmp_path):
    """train.epochs is resolved from what every rank is dealt (the ShardStream's epoch), not the set's size."""
    from mimkit.training import epoch_size

    write_shards(_images(45), None, tmp_path / "s", per_shard=10)  # shards of 10, 10, 10, 10, 5
    data = _shard_set(tmp_path / "s")
    assert epoch_size(data, 1) == 45 and epoch_size(data, 2) == 2 * (5 + 10)
    stream = _stream(data, rank=1, world=2, micro=5)
    assert stream.images_per_epoch == epoch_size(data, 2)


def test_shards_cli_writes_a_mixed_order_and_prints_the_pattern(tmp_path, capsys):
    root = _folder_with_a_corrupt_image(tmp_path / "imgs")
    assert main(["shards", "--data", str(root), "--out", str(tmp_path / "s"), "--per-shard", "6"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 shard(s)" in printed and "shard-{000000..000001}.tar" in printed
    first = ShardSet([load_index(tmp_path / "s" / "shard-000000.tar")[0]], 16, 1)
    assert sorted(set(first.labels.tolist())) == [0, 1]  # folder order is shuffled: both classes in one shard


def test_a_whole_unreadable_batch_is_a_clear_error(tmp_path):
    path = _tar(tmp_path / "bad.tar", [(f"{i}.jpg", b"junk") for i in range(4)])
    data = ShardSet([load_index(path)[0]], 18, 1)
    with pytest.raises(ShardError, match="whole batch"):
        _stream(data, micro=4).get(0, 0)


# ---------------------------------------------------------------------------------------------------- build_data
def _cfg(*extra: str):
    return resolved(tiny_config("data.name=webdataset", *extra))


def test_build_data_holds_out_the_last_shard(shard_dir):
    data = build_data(_cfg(f"data.root={shard_dir}"), log=_quiet)
    assert isinstance(data.train, ShardSet) and len(data.train) == (SHARDS - 1) * PER_SHARD
    assert [s.path.name for s in data.train.shards] == [f"shard-{n:06d}.tar" for n in range(SHARDS - 1)]
    assert len(data.heldout) == PER_SHARD and "last shard shard-000005.tar" in data.heldout_source
    assert data.heldout.ids.tolist() == [HELDOUT_ID_OFFSET + i for i in range(PER_SHARD)]
    assert data.heldout.images.shape == (PER_SHARD, 1, 18, 18) and data.classes == [str(c) for c in range(10)]
    assert data.heldout.labels.tolist() == [(50 + i) % 10 for i in range(PER_SHARD)]
    with pytest.raises(ShardError, match="one shard.*val_root"):
        build_data(_cfg(f"data.root={shard_dir}/shard-000000.tar"), log=_quiet)


def test_build_data_val_root_keeps_every_training_shard(shard_dir, tmp_path):
    write_shards(_images(7, seed=1), np.zeros(7, dtype=np.int64), tmp_path / "val", 4, prefix="val")
    data = build_data(_cfg(f"data.root={shard_dir}", f"data.val_root={tmp_path / 'val'}/val-*.tar"), log=_quiet)
    assert len(data.train) == SHARDS * PER_SHARD and len(data.heldout) == 7
    assert data.heldout_source.startswith("val_root")
    subset = data.train.subset(torch.tensor([0, 59]))  # what the fixed train-subset evaluators decode
    assert subset.ids.tolist() == [2 * ID_STRIDE, 7 * ID_STRIDE + 9] and subset.images.shape == (2, 1, 18, 18)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["data.fraction=0.5"], "data.fraction.*whole training set"),
        (["data.val_fraction=0.1"], "val_fraction"),
        (["data.task=rotation", "method.name=task"], "data.task=rotation"),
        (["data.shuffle_buffer=0"], "shuffle_buffer"),
    ],
)
def test_config_errors_for_what_shards_cannot_do(extra, message, shard_dir):
    with pytest.raises(ConfigError, match=message):
        tiny_config("data.name=webdataset", f"data.root={shard_dir}", *extra)


def test_config_needs_a_root():
    with pytest.raises(ConfigError, match="data.root.*brace pattern"):
        load_config(None, ["data.name=webdataset"])


def test_linprobe_and_knn_refuse_streamed_shards(shard_dir, tmp_path):
    data = build_data(_cfg(f"data.root={shard_dir}"), log=_quiet)
    with pytest.raises(ConfigError, match="knn.*whole training set"):
        require_in_memory(data, "knn")
    with pytest.raises(ConfigError, match="linprobe"):
        probe_setup(tiny_config("data.name=webdataset", f"data.root={shard_dir}"), tmp_path / "probe", _quiet)


# ---------------------------------------------------------------------------------------------------- end to end
def test_cli_pretrain_on_shards_writes_a_checkpoint(shard_dir, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [
        *TINY,
        "data.name=webdataset",
        f"data.root={shard_dir}",
        "data.num_workers=1",
        "train.steps=4",
        "train.batch_size=8",
        "train.eval_samples=8",
    ]
    assert main(["pretrain", "--config", "mae_fmnist_tiny", "--out", str(out), *sets(overrides)]) == 0
    assert (out / "checkpoints" / "last").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["step"] == 4 and saved["train_images"] == 50 and saved["heldout_images"] == PER_SHARD
    assert saved["images_per_epoch"] == 48


def test_cli_missing_shards_exit_2(tmp_path, capsys):
    code = main(
        [
            "pretrain",
            "--config",
            "mae_fmnist_tiny",
            "--out",
            str(tmp_path / "run"),
            *sets([*TINY, "data.name=webdataset", f"data.root={tmp_path}/missing-{{000..003}}.tar"]),
        ]
    )
    assert code == 2
    assert "missing-000.tar" in capsys.readouterr().err
