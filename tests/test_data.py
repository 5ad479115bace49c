"""Data: idx parsing and Fashion-MNIST lookup, nested subsets and held-out splits, image folders (formats, layouts,
corrupt files, odd modes, cache), build_data, batched keyed augmentation and keyed random numbers."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.config import load_config, resolved
from mimkit.data import fashion_mnist
from mimkit.data.datasets import ImageSet, build_data, nested_subset, split_heldout
from mimkit.data.fashion_mnist import DataNotFoundError, read_idx
from mimkit.data.folder import FolderError, decode_image, load_folder, scan
from mimkit.data.keyed_random import STREAM_CROP, STREAM_FLIP, keyed_uniform, sample_keys
from mimkit.data.transforms import BatchAugment

MASK32 = 0xFFFFFFFF


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Decoded folders and downloads go to this test's tmp directory, never to ~/.cache."""
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MIMKIT_DATA", raising=False)


def _quiet(*_args):
    pass


# ---------------------------------------------------------------------------------------------------- idx files
def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_gz(path: Path, payload: bytes) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(payload)
    return path


def test_read_idx_parses_images_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(7,), dtype=np.uint8)
    got_images = read_idx(_write_gz(tmp_path / "img.gz", _idx_bytes(images)))
    got_labels = read_idx(_write_gz(tmp_path / "lab.gz", _idx_bytes(labels)))
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 5, 3)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("magic", [b"\x00\x00\x09\x03", b"\x01\x00\x08\x03", b"\x00\x00\x0d\x03", b"PK\x03\x04"])
def test_read_idx_bad_magic(tmp_path, magic):
    payload = magic + struct.pack(">3I", 2, 2, 2) + bytes(8)
    with pytest.raises(DataNotFoundError, match="bad magic"):
        read_idx(_write_gz(tmp_path / "x.gz", payload))


def test_read_idx_empty_payload(tmp_path):
    with pytest.raises(DataNotFoundError):
        read_idx(_write_gz(tmp_path / "x.gz", b""))


def test_read_idx_truncated_body(tmp_path):
    full = _idx_bytes(np.zeros((10, 4, 4), dtype=np.uint8))
    with pytest.raises(DataNotFoundError, match="truncated"):
        read_idx(_write_gz(tmp_path / "x.gz", full[:-5]))


def test_read_idx_extra_bytes_rejected(tmp_path):
    full = _idx_bytes(np.zeros((10, 4, 4), dtype=np.uint8))
    with pytest.raises(DataNotFoundError):
        read_idx(_write_gz(tmp_path / "x.gz", full + bytes(3)))


@pytest.mark.parametrize("damage", ["header_cut", "gzip_cut", "not_gzip"])
def test_read_idx_damaged_file_raises_data_not_found(tmp_path, damage):
    full = _idx_bytes(np.arange(20 * 20 * 20, dtype=np.uint64).astype(np.uint8).reshape(20, 20, 20))
    path = tmp_path / "x.gz"
    if damage == "header_cut":
        _write_gz(path, full[:9])
    elif damage == "gzip_cut":
        raw = gzip.compress(full)
        path.write_bytes(raw[: len(raw) // 2])
    else:
        path.write_bytes(full)
    with pytest.raises(DataNotFoundError):
        read_idx(path)


def _write_fake_fmnist(directory: Path, n_train: int = 6, n_test: int = 4) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        _write_gz(directory / fashion_mnist.FILES[f"{split}_images"], _idx_bytes(np.zeros((n, 28, 28), np.uint8)))
        _write_gz(directory / fashion_mnist.FILES[f"{split}_labels"], _idx_bytes(np.arange(n, dtype=np.uint8) % 10))
    return directory


def test_load_split_rejects_wrong_counts(tmp_path):
    directory = _write_fake_fmnist(tmp_path / "fm")
    with pytest.raises(DataNotFoundError, match="expected 60000"):
        fashion_mnist.load_split(directory, "train")


# ---------------------------------------------------------------------------------------------------- locate
@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """Make sure no real copy is found: fake Debian dir, empty cache, no MIMKIT_DATA, downloads forbidden."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "debian")

    def no_network(*_a, **_k):
        raise AssertionError("locate() tried to download")

    monkeypatch.setattr(fashion_mnist, "download", no_network)
    return tmp_path


def test_locate_not_found_says_how_to_get_the_data(nowhere):
    with pytest.raises(DataNotFoundError) as info:
        fashion_mnist.locate(None, allow_download=False)
    msg = str(info.value)
    assert "Fashion-MNIST not found" in msg
    assert str(nowhere / "debian") in msg and str(nowhere / "cache") in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "data.root" in msg and "MIMKIT_DATA" in msg
    assert "Download failed" not in msg


def test_a_data_root_without_the_files_is_an_error_not_a_fall_back(nowhere, monkeypatch):
    """A root the user named is the only place looked in, even when another copy exists."""
    monkeypatch.delenv("MIMKIT_DATA", raising=False)
    _write_fake_fmnist(nowhere / "debian")  # an installed copy mimkit would otherwise find
    root = nowhere / "my_root"
    root.mkdir()
    (root / fashion_mnist.FILES["train_images"]).write_bytes(b"")
    with pytest.raises(DataNotFoundError) as info:
        fashion_mnist.locate(str(root), allow_download=False)
    msg = str(info.value)
    assert f"data.root '{root}' lacks" in msg and fashion_mnist.FILES["test_labels"] in msg
    assert fashion_mnist.FILES["train_images"] not in msg.split("lacks")[1].split(":")[0]
    assert "apt-get install dataset-fashion-mnist" in msg
    with pytest.raises(DataNotFoundError, match="does not exist"):
        fashion_mnist.locate(str(nowhere / "typo"), allow_download=False)
    assert fashion_mnist.locate(None, allow_download=False) == nowhere / "debian"


def test_locate_incomplete_directory_is_not_found(nowhere):
    root = _write_fake_fmnist(nowhere / "partial")
    (root / fashion_mnist.FILES["test_labels"]).unlink()
    with pytest.raises(DataNotFoundError):
        fashion_mnist.locate(str(root), allow_download=False)


def test_locate_reports_failed_download(nowhere, monkeypatch):
    def offline(target):
        raise OSError("network unreachable")

    monkeypatch.setattr(fashion_mnist, "download", offline)
    with pytest.raises(DataNotFoundError, match="Download failed: network unreachable"):
        fashion_mnist.locate(None, allow_download=True)


def test_locate_search_order(nowhere, monkeypatch):
    data_parent = nowhere / "shared"
    in_env = _write_fake_fmnist(data_parent / "fashion-mnist")
    monkeypatch.setenv("MIMKIT_DATA", str(data_parent))
    assert fashion_mnist.locate(None, allow_download=False) == in_env
    explicit = _write_fake_fmnist(nowhere / "explicit")
    assert fashion_mnist.locate(str(explicit), allow_download=False) == explicit  # data.root comes first


def test_build_data_fashion_mnist_missing_is_data_not_found(nowhere):
    cfg = resolved(load_config(None, [f"data.root={nowhere / 'empty'}", "data.download=false"]))
    with pytest.raises(DataNotFoundError, match="apt-get"):
        build_data(cfg, log=_quiet)


# ------------------------------------------------------------------------------------------------- real Fashion-MNIST
real_fmnist = pytest.mark.skipif(
    not fashion_mnist._has_all(fashion_mnist.DEBIAN_DIR),
    reason=f"Fashion-MNIST not installed in {fashion_mnist.DEBIAN_DIR}",
)


@real_fmnist
def test_real_fashion_mnist():
    directory = fashion_mnist.DEBIAN_DIR
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = fashion_mnist.load_split(directory, split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert sorted(np.unique(labels).tolist()) == list(range(10))
        assert np.bincount(labels).tolist() == [n // 10] * 10
        assert images.max() == 255 and images.min() == 0
        assert 50 < images.mean() < 100  # ~72.9 (mean 0.286 * 255)


@real_fmnist
def test_build_data_real_fashion_mnist_fraction():
    cfg = resolved(
        load_config(
            "mae_fmnist_tiny", [f"data.root={fashion_mnist.DEBIAN_DIR}", "data.fraction=0.1", "data.download=false"]
        )
    )
    data = build_data(cfg, log=_quiet)
    assert len(data.train) == 6000 and len(data.heldout) == 10000
    assert data.heldout_source == "test split"
    assert torch.bincount(data.train.labels).tolist() == [600] * 10
    assert data.train.images.shape == (6000, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert not set(data.train.ids.tolist()) & set(data.heldout.ids.tolist())
    assert len(data.classes) == 10


# ---------------------------------------------------------------------------------------------------- subsets
def _labels(n: int = 1003, classes: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    probs = torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08])[:classes]
    return torch.multinomial(probs, n, replacement=True, generator=g)


@pytest.mark.parametrize("with_labels", [True, False])
def test_nested_subset_is_nested(with_labels):
    labels = _labels()
    lab = labels if with_labels else None
    sets = [set(nested_subset(lab, len(labels), f, seed=3).tolist()) for f in (0.1, 0.2, 0.5, 1.0)]
    assert sets[0] < sets[1] < sets[2] < sets[3]
    assert sets[3] == set(range(len(labels)))


def test_nested_subset_class_balanced():
    labels = _labels()
    counts = torch.bincount(labels).tolist()
    assert len(set(counts)) == len(counts)  # unequal classes, so the check below means something
    for fraction in (0.1, 0.2, 0.33, 0.5, 0.9):
        pos = nested_subset(labels, len(labels), fraction, seed=1)
        assert pos.dtype == torch.int64
        assert torch.equal(pos, torch.sort(torch.unique(pos)).values)  # sorted, no duplicates
        got = torch.bincount(labels[pos], minlength=len(counts)).tolist()
        assert got == [round(n * fraction) for n in counts]


def test_nested_subset_unlabelled_size():
    pos = nested_subset(None, 1000, 0.25, seed=0)
    assert len(pos) == 250 and pos.min() >= 0 and pos.max() < 1000


def test_nested_subset_seeds():
    labels = _labels()
    a = nested_subset(labels, len(labels), 0.2, seed=0)
    assert torch.equal(a, nested_subset(labels, len(labels), 0.2, seed=0))
    b = nested_subset(labels, len(labels), 0.2, seed=1)
    assert len(a) == len(b) and not torch.equal(a, b)
    assert len(set(a.tolist()) & set(b.tolist())) < 0.5 * len(a)  # not a near copy


def test_split_heldout_disjoint_deterministic_balanced():
    labels = _labels()
    n = len(labels)
    train, held = split_heldout(labels, n, 0.1, seed=4)
    assert not set(train.tolist()) & set(held.tolist())
    assert sorted(train.tolist() + held.tolist()) == list(range(n))
    assert torch.bincount(labels[held]).tolist() == [round(c * 0.1) for c in torch.bincount(labels).tolist()]
    train2, held2 = split_heldout(labels, n, 0.1, seed=4)
    assert torch.equal(train, train2) and torch.equal(held, held2)
    _, held3 = split_heldout(labels, n, 0.1, seed=5)
    assert not torch.equal(held, held3)
    _, held_unlab = split_heldout(None, n, 0.1, seed=4)
    assert len(held_unlab) == round(n * 0.1)


# ---------------------------------------------------------------------------------------------------- image folders
def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _solid(rgb, size=(24, 20)) -> Image.Image:
    return Image.new("RGB", size, tuple(rgb))


FORMATS = [".png", ".jpg", ".webp", ".bmp"]
CLASS_COLORS = {"cat": (220, 30, 30), "dog": (30, 30, 220), "eel": (30, 200, 30)}


def _class_tree(root: Path) -> dict[str, int]:
    """3 classes x 4 formats; one file per class is in a nested subfolder. Returns file count per class."""
    counts = {}
    for cls, rgb in CLASS_COLORS.items():
        for i, ext in enumerate(FORMATS):
            sub = root / cls / ("deeper/deepest" if i == 1 else "")
            _save(sub / f"{cls}_{i}{ext}", _solid(rgb), **({"quality": 95} if ext in (".jpg", ".webp") else {}))
        counts[cls] = len(FORMATS)
    (root / "cat" / "notes.txt").write_text("not an image")
    return counts


def _nearest_class(pixel: np.ndarray) -> str:
    return min(CLASS_COLORS, key=lambda c: np.abs(np.array(CLASS_COLORS[c]) - pixel).sum())


def test_scan_imagefolder_layout_recursive(tmp_path):
    root = tmp_path / "tree"
    _class_tree(root)
    index = scan(root)
    assert index.classes == ["cat", "dog", "eel"]
    assert len(index.files) == 12
    assert {p.suffix for p in index.files} == set(FORMATS)
    assert any("deepest" in p.parts for p in index.files)
    for path, label in zip(index.files, index.labels):
        assert index.classes[label] == path.relative_to(root).parts[0]


def test_load_folder_imagefolder_layout(tmp_path):
    root = tmp_path / "tree"
    _class_tree(root)
    decoded = load_folder(root, 16, 3, log=_quiet)
    assert decoded.images.shape == (12, 3, 16, 16) and decoded.images.dtype == np.uint8
    assert decoded.classes == ["cat", "dog", "eel"] and decoded.skipped == []
    assert decoded.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for image, label in zip(decoded.images, decoded.labels):
        centre = image[:, 8, 8].astype(int)
        assert _nearest_class(centre) == decoded.classes[label]  # labels stay aligned with pixels
        assert np.abs(centre - np.array(CLASS_COLORS[decoded.classes[label]])).max() <= 12  # lossy formats


def test_load_folder_flat_layout_has_no_labels(tmp_path):
    root = tmp_path / "flat"
    _save(root / "a.png", _solid((10, 20, 30)))
    _save(root / "b.JPG", _solid((40, 50, 60)))
    _save(root / "sub" / "c.webp", _solid((70, 80, 90)))
    _save(root / "sub" / "more" / "d.bmp", _solid((100, 110, 120)))
    index = scan(root)
    assert index.labels is None and index.classes == [] and len(index.files) == 4
    decoded = load_folder(root, 8, 3, log=_quiet)
    assert decoded.labels is None and decoded.images.shape == (4, 3, 8, 8)


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    root = tmp_path / "tree"
    _class_tree(root)
    rng = np.random.default_rng(0)
    (root / "cat" / "random_bytes.jpg").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    good_png = root / "tmp_full.png"
    _save(good_png, Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    data = good_png.read_bytes()
    good_png.unlink()
    (root / "dog" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "eel" / "empty.png").write_bytes(b"")
    logs = []
    decoded = load_folder(root, 16, 3, log=logs.append)
    assert len(decoded.skipped) == 3
    assert {Path(p).name for p in decoded.skipped} == {"random_bytes.jpg", "truncated.png", "empty.png"}
    assert decoded.images.shape[0] == 12
    assert decoded.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # skipped files do not shift labels
    for image, label in zip(decoded.images, decoded.labels):
        assert _nearest_class(image[:, 8, 8].astype(int)) == decoded.classes[label]
    assert any("skipped 3" in line for line in logs)


def test_only_corrupt_files_is_folder_error(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"\xff\xd8 nope")
    (root / "b.png").write_bytes(b"")
    with pytest.raises(FolderError, match="could be read"):
        load_folder(root, 8, 3, log=_quiet)


def test_empty_and_missing_folders(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images")
    with pytest.raises(FolderError, match="has no images") as info:
        load_folder(empty, 8, 3, log=_quiet)
    assert str(empty) in str(info.value) and ".png" in str(info.value)
    missing = tmp_path / "missing"
    with pytest.raises(FolderError, match="does not exist") as info:
        scan(missing)
    assert str(missing) in str(info.value) and "data.root" in str(info.value)


def _odd_mode_images() -> dict[str, tuple[Image.Image, tuple[int, int, int] | None]]:
    """file name -> (image, expected RGB after decoding or None when not checked)."""
    p = Image.new("P", (30, 20), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.info["transparency"] = 0  # palette entry 0 (red) is transparent: white after compositing
    return {
        "rgba.png": (Image.new("RGBA", (30, 20), (255, 0, 0, 128)), (255, 127, 127)),
        "la.png": (Image.new("LA", (30, 20), (100, 128)), (177, 177, 177)),
        "p_transparent.png": (p, (255, 255, 255)),
        "i16.png": (Image.fromarray(np.full((20, 30), 200, dtype=np.uint16)), None),
        "cmyk.jpg": (Image.new("CMYK", (30, 20), (0, 255, 255, 0)), (255, 0, 0)),
        "bilevel.png": (Image.new("1", (30, 20), 1), (255, 255, 255)),
        "gray.bmp": (Image.new("L", (30, 20), 77), (77, 77, 77)),
        "rgba.webp": (Image.new("RGBA", (30, 20), (0, 0, 255, 255)), (0, 0, 255)),
    }


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("L", 1)])
def test_odd_modes_decode_to_requested_channels(tmp_path, mode, channels):
    for name, (img, expected) in _odd_mode_images().items():
        path = _save(tmp_path / name, img)
        source_mode = Image.open(path).mode
        arr = decode_image(path, 12, mode)
        assert arr is not None, f"{name} ({source_mode}) was not decoded"
        assert arr.shape == (12, 12, channels) and arr.dtype == np.uint8, name
        if expected is not None:
            want = (
                np.array(expected)
                if channels == 3
                else np.array([round(0.299 * expected[0] + 0.587 * expected[1] + 0.114 * expected[2])])
            )
            assert np.abs(arr[6, 6].astype(int) - want).max() <= 6, (name, source_mode, arr[6, 6], want)


def test_saved_odd_modes_are_what_the_test_thinks(tmp_path):
    modes = {name: Image.open(_save(tmp_path / name, img)).mode for name, (img, _) in _odd_mode_images().items()}
    assert modes["rgba.png"] == "RGBA" and modes["la.png"] == "LA" and modes["p_transparent.png"] == "P"
    assert modes["i16.png"].startswith("I") and modes["cmyk.jpg"] == "CMYK" and modes["bilevel.png"] == "1"
    assert "transparency" in Image.open(tmp_path / "p_transparent.png").info


@pytest.mark.parametrize("channels", [1, 3])
def test_load_folder_odd_modes(tmp_path, channels):
    root = tmp_path / "odd"
    for name, (img, _) in _odd_mode_images().items():
        _save(root / name, img)
    decoded = load_folder(root, 10, channels, log=_quiet)
    assert decoded.skipped == []
    assert decoded.images.shape == (8, channels, 10, 10)


def test_16bit_gray_keeps_its_contrast(tmp_path):
    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = _save(tmp_path / "g16.png", Image.fromarray(gradient))
    arr = decode_image(path, 64, "L")[..., 0].astype(float)
    assert (arr == 255).mean() < 0.1
    assert arr[-1].mean() - arr[0].mean() > 200  # dark top, bright bottom, like the source


def test_decode_cache_reused_and_invalidated(tmp_path):
    root = tmp_path / "tree"
    _class_tree(root)
    logs = []
    first = load_folder(root, 16, 3, log=logs.append)
    assert sum("decoding" in line for line in logs) == 1
    cached = list((tmp_path / "cache" / "decoded").glob("*.u8"))
    assert len(cached) == 1
    second = load_folder(root, 16, 3, log=logs.append)
    assert sum("decoding" in line for line in logs) == 1  # served from the cache
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(second.images))
    load_folder(root, 16, 1, log=logs.append)  # other channel count: another cache entry
    assert sum("decoding" in line for line in logs) == 2
    changed = root / "dog" / "dog_0.png"
    _save(changed, _solid((0, 0, 0)))
    os.utime(changed, ns=(10**18, 10**18))
    third = load_folder(root, 16, 3, log=logs.append)
    assert sum("decoding" in line for line in logs) == 3  # a changed file re-decodes
    idx = [str(p) for p in scan(root).files].index(str(changed))
    assert third.images[idx].max() < 10 and first.images[idx].max() > 200


def test_decode_with_worker_processes_matches_serial(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    _class_tree(root)
    serial = load_folder(root, 16, 3, workers=0, log=_quiet)
    serial_images = np.array(serial.images)
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache2"))
    parallel = load_folder(root, 16, 3, workers=2, log=_quiet)
    np.testing.assert_array_equal(np.asarray(parallel.images), serial_images)
    assert parallel.labels.tolist() == serial.labels.tolist()


# ---------------------------------------------------------------------------------------------------- build_data
def _coded_tree(root: Path, per_class: tuple[int, ...] = (12, 8, 20)) -> int:
    """PNG tree where image number i (sorted order) is solid (R=i, G=50*label, B=7): pixels identify ids/labels."""
    i = 0
    for label, n in enumerate(per_class):
        for j in range(n):
            _save(root / f"c{label}" / f"img_{i:03d}.png", _solid((i, 50 * label, 7), size=(20, 20)))
            i += 1
    return i


def _folder_cfg(root: Path, *extra: str):
    return resolved(
        load_config(
            None, ["data.name=folder", f"data.root={root}", "data.img_size=16", "model.name=mim_vit_femto", *extra]
        )
    )


def _check_aligned(s: ImageSet, id_offset: int = 0):
    assert torch.equal(s.images[:, 0, 5, 5].long(), s.ids - id_offset)
    assert torch.equal(s.images[:, 1, 5, 5].long(), s.labels * 50)


def test_build_data_folder_val_fraction(tmp_path):
    n = _coded_tree(tmp_path / "tree")
    cfg = _folder_cfg(tmp_path / "tree", "data.val_fraction=0.25")
    data = build_data(cfg, log=_quiet)
    assert len(data.train) + len(data.heldout) == n
    assert len(data.heldout) == round(12 * 0.25) + round(8 * 0.25) + round(20 * 0.25)
    assert not set(data.train.ids.tolist()) & set(data.heldout.ids.tolist())
    assert "25%" in data.heldout_source
    assert data.classes == ["c0", "c1", "c2"]
    assert data.train.images.shape[1:] == (3, cfg.data.decode_size, cfg.data.decode_size)
    _check_aligned(data.train)
    _check_aligned(data.heldout)
    again = build_data(cfg, log=_quiet)
    assert torch.equal(again.heldout.ids, data.heldout.ids)  # fixed per seed


def test_build_data_folder_default_heldout_and_fraction(tmp_path):
    n = _coded_tree(tmp_path / "tree", per_class=(40, 40))
    data = build_data(_folder_cfg(tmp_path / "tree"), log=_quiet)
    assert len(data.heldout) == 4 and len(data.train) == n - 4  # default: 5% of train
    half = build_data(_folder_cfg(tmp_path / "tree", "data.fraction=0.5"), log=_quiet)
    assert torch.equal(half.heldout.ids, data.heldout.ids)  # the held-out set does not depend on the fraction
    assert len(half.train) == 38 and set(half.train.ids.tolist()) < set(data.train.ids.tolist())
    _check_aligned(half.train)


def test_build_data_folder_val_root(tmp_path):
    n_train = _coded_tree(tmp_path / "train", per_class=(6, 6, 6))
    n_val = _coded_tree(tmp_path / "val", per_class=(2, 3, 4))
    cfg = _folder_cfg(tmp_path / "train", f"data.val_root={tmp_path / 'val'}")
    data = build_data(cfg, log=_quiet)
    assert len(data.train) == n_train and len(data.heldout) == n_val
    assert "val_root" in data.heldout_source and str(tmp_path / "val") in data.heldout_source
    assert data.heldout.ids.min() >= 10_000_000
    assert not set(data.train.ids.tolist()) & set(data.heldout.ids.tolist())
    _check_aligned(data.train)
    _check_aligned(data.heldout, id_offset=10_000_000)


def test_build_data_folder_flat_and_gray(tmp_path):
    root = tmp_path / "flat"
    for i in range(10):
        _save(root / f"{i}.png", _solid((i * 20, i * 20, i * 20)))
    data = build_data(_folder_cfg(root, "data.in_chans=1", "data.val_fraction=0.2"), log=_quiet)
    assert data.train.labels is None and data.heldout.labels is None
    assert len(data.heldout) == 2 and len(data.train) == 8
    assert data.train.images.shape[1] == 1


def test_build_data_single_image_cannot_split(tmp_path):
    _save(tmp_path / "one" / "a.png", _solid((1, 2, 3)))
    with pytest.raises(FolderError, match="at least 2"):
        build_data(_folder_cfg(tmp_path / "one"), log=_quiet)


def test_build_data_missing_folder(tmp_path):
    with pytest.raises(FolderError, match="does not exist"):
        build_data(_folder_cfg(tmp_path / "nope"), log=_quiet)


# ---------------------------------------------------------------------------------------------------- BatchAugment
def _images(b: int, c: int, s: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, s, s), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _aug(out=16, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), hflip=True, c=3, seed=0) -> BatchAugment:
    return BatchAugment(out, scale, ratio, hflip, [0.5] * c, [0.25] * c, seed)


@pytest.mark.parametrize("c, s, out", [(1, 28, 32), (3, 37, 32), (3, 64, 16)])
def test_augment_shape_dtype(c, s, out):
    x = _aug(out=out, c=c)(_images(8, c, s), torch.arange(8))
    assert x.shape == (8, c, out, out) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-5 and x.max() <= (1 - 0.5) / 0.25 + 1e-5


def test_augment_deterministic_and_key_dependent():
    images = _images(16, 3, 40)
    keys = torch.arange(16) + 100
    a = _aug()(images, keys)
    assert torch.equal(a, _aug()(images.clone(), keys.clone()))
    b = _aug()(images, keys + 16)
    assert all(not torch.allclose(a[i], b[i]) for i in range(16))
    c = _aug(seed=1)(images, keys)
    assert sum(not torch.allclose(a[i], c[i]) for i in range(16)) >= 15
    # a sample's augmentation does not depend on the rest of the batch
    assert torch.equal(_aug()(images[3:4], keys[3:4])[0], a[3])


def test_identity_crop_reproduces_the_image():
    images = _images(4, 3, 16)
    x = _aug(out=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)(images, torch.arange(4))
    expected = (images.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


def test_crop_content_matches_its_box():
    images = _images(32, 1, 32)
    aug = _aug(out=16, scale=(0.25, 0.25), ratio=(1.0, 1.0), hflip=False, c=1)
    keys = torch.arange(32)
    boxes = aug.crop_boxes(keys, 32, 32)
    x = aug(images, keys)
    for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        assert (x2 - x1, y2 - y1) == (16, 16)
        crop = (images[i, :, y1:y2, x1:x2].float() / 255 - 0.5) / 0.25
        torch.testing.assert_close(x[i], crop, atol=1e-4, rtol=0)
    assert len({tuple(b) for b in boxes.tolist()}) > 20  # positions vary


@pytest.mark.parametrize("height, width", [(64, 64), (48, 80), (37, 37)])
def test_crop_boxes_inside_image(height, width):
    aug = _aug()
    boxes = aug.crop_boxes(torch.arange(5000), height, width)
    assert boxes.shape == (5000, 4)
    x1, y1, x2, y2 = boxes.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= width).all() and (y2 <= height).all()
    assert (x2 > x1).all() and (y2 > y1).all()
    assert torch.equal(boxes, boxes.round())


def test_crop_area_and_aspect_within_range_when_valid():
    # scale <= 0.3 with aspect in [3/4, 4/3] always fits a 64x64 image: every first attempt is valid
    aug = _aug(scale=(0.1, 0.3))
    boxes = aug.crop_boxes(torch.arange(5000), 64, 64)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = w * h / (64 * 64)
    assert area.min() >= 0.1 * 0.85 and area.max() <= 0.3 * 1.15  # rounding w and h to pixels
    assert area.min() < 0.12 and area.max() > 0.28  # the range is used
    aspect = w / h
    assert aspect.min() >= 0.75 * 0.85 and aspect.max() <= (4 / 3) * 1.15
    # the default MAE range: a valid attempt or the whole-image fallback, both within [0.2, 1]
    boxes = _aug(scale=(0.2, 1.0)).crop_boxes(torch.arange(5000), 64, 64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (64 * 64)
    assert area.min() >= 0.2 * 0.85 and area.max() <= 1.0
    assert abs(area.mean().item() - 0.6) < 0.1


def test_crop_fallback_is_centred_and_keeps_the_aspect_limit():
    aug = _aug(scale=(1.0, 1.0), ratio=(2.0, 3.0))  # no attempt fits a square: w = sqrt(area * >=2) > width
    boxes = aug.crop_boxes(torch.arange(10), 32, 32)
    assert boxes.tolist() == [[0.0, 8.0, 32.0, 24.0]] * 10


def test_flip_about_half_and_exact():
    s = 8
    ramp = torch.arange(s, dtype=torch.uint8).mul(30).view(1, 1, 1, s).expand(2000, 1, s, s).contiguous()
    aug = _aug(out=s, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=True, c=1)
    x = aug(ramp, torch.arange(2000))
    plain = (ramp.float() / 255 - 0.5) / 0.25
    same = torch.isclose(x, plain, atol=1e-5).flatten(1).all(1)
    flipped = torch.isclose(x, plain.flip(-1), atol=1e-5).flatten(1).all(1)
    assert (same ^ flipped).all()  # every output is the image or its mirror image
    assert 0.45 < flipped.float().mean().item() < 0.55
    no_flip = _aug(out=s, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, c=1)(ramp[:200], torch.arange(200))
    torch.testing.assert_close(no_flip, plain[:200], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- keyed_uniform
def test_keyed_uniform_range_shape_dtype():
    u = keyed_uniform(torch.arange(20000), 10, seed=0, stream=1)
    assert u.shape == (20000, 10) and u.dtype == torch.float32
    assert (u >= 0).all() and (u < 1).all()


def test_keyed_uniform_roughly_uniform():
    u = keyed_uniform(torch.arange(20000), 10, seed=3, stream=2).double()
    assert abs(u.mean().item() - 0.5) < 0.01
    assert abs(u.var().item() - 1 / 12) < 0.003
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max().item() < 0.01
    # columns and neighbouring keys are uncorrelated
    flat = u.flatten()
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()) < 0.02


def test_keyed_uniform_deterministic_and_pure():
    keys = torch.tensor([0, 1, 2, 7, 123456789, 2**32 - 1, 2**40 + 5, -3])
    a = keyed_uniform(keys, 6, seed=5, stream=3)
    assert torch.equal(a, keyed_uniform(keys.clone(), 6, seed=5, stream=3))  # same result computed twice
    assert torch.equal(a, keyed_uniform(keys.to(torch.int32).to(torch.int64), 6, 5, 3))
    assert torch.equal(a[:, :4], keyed_uniform(keys, 4, seed=5, stream=3))  # a column does not depend on n
    assert torch.equal(a[[3, 1]], keyed_uniform(keys[[3, 1]], 6, seed=5, stream=3))  # nor on the batch
    assert torch.equal(a[6], keyed_uniform(torch.tensor([2**40 + 5]), 6, 5, 3)[0])
    # only the low 32 bits of a key matter (keys are 32-bit)
    assert torch.equal(keyed_uniform(torch.tensor([5 + 2**32]), 6, 5, 3), keyed_uniform(torch.tensor([5]), 6, 5, 3))
    assert not torch.equal(a, keyed_uniform(keys, 6, seed=6, stream=3))
    assert not torch.equal(a, keyed_uniform(keys, 6, seed=5, stream=4))
    assert len(set(a.flatten().tolist())) == a.numel()


def _mix32_ref(x: int) -> int:
    x &= MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    return (x >> 16) ^ x


def _uniform_ref(key: int, col: int, seed: int, stream: int) -> int:
    """The keyed hash in arbitrary-precision ints: tensors must give the same bits (no int64 overflow anywhere)."""
    salt = _mix32_ref(_mix32_ref(seed) ^ (stream * 0x85EBCA6B))
    k = _mix32_ref((key & MASK32) ^ salt)
    return _mix32_ref(_mix32_ref((k * 0x27D4EB2D + col * 0x165667B1) & MASK32) ^ salt)


def test_keyed_uniform_matches_arbitrary_precision_reference():
    keys = [0, 1, 99, 2**31, 2**32 - 1, 2**32 - 2, 3_000_000_000]
    got = keyed_uniform(torch.tensor(keys), 5, seed=11, stream=STREAM_CROP)
    for i, key in enumerate(keys):
        for col in range(5):
            assert got[i, col].item() == np.float32((_uniform_ref(key, col, 11, STREAM_CROP) >> 8) / 2**24)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_keyed_uniform_same_on_gpu():
    keys = torch.arange(1000) * 104729
    assert torch.equal(keyed_uniform(keys.cuda(), 8, 1, 2).cpu(), keyed_uniform(keys, 8, 1, 2))
    images = _images(8, 3, 32)
    aug = _aug()
    torch.testing.assert_close(aug(images.cuda(), keys[:8].cuda()).cpu(), aug(images, keys[:8]), atol=1e-4, rtol=0)


def _inv_mix32(y: int) -> int:
    inv = pow(0x45D9F3B, -1, 2**32)
    x = y ^ (y >> 16)
    x = (x * inv) & MASK32
    x ^= x >> 16
    x = (x * inv) & MASK32
    return x ^ (x >> 16)


def _key_giving_top_value(seed: int, stream: int, col: int) -> int:
    """A key whose uniform in column `col` is (2**32 - 1) / 2**32, found by inverting the keyed hash."""
    salt = _mix32_ref(_mix32_ref(seed) ^ (stream * 0x85EBCA6B))
    mixed = _inv_mix32(_inv_mix32(MASK32) ^ salt)
    k = ((mixed - col * 0x165667B1) * pow(0x27D4EB2D, -1, 2**32)) & MASK32
    return _inv_mix32(k) ^ salt


def test_inverse_helper_finds_the_top_hash_value():
    key = _key_giving_top_value(0, 3, 0)
    assert _uniform_ref(key, 0, 0, 3) == MASK32


def test_keyed_uniform_never_returns_one():
    key = _key_giving_top_value(seed=0, stream=3, col=0)
    assert keyed_uniform(torch.tensor([key]), 1, seed=0, stream=3).item() < 1.0


def test_crop_box_inside_image_for_extreme_key():
    key = _key_giving_top_value(seed=0, stream=STREAM_CROP, col=2)  # attempt 0's `top` uniform
    aug = _aug(scale=(0.1, 0.3), seed=0)  # every attempt valid, so attempt 0 is used
    box = aug.crop_boxes(torch.tensor([key]), 32, 32)[0]
    assert box[3].item() <= 32


def test_sample_keys_change_with_epoch():
    ids = torch.arange(100)
    k0, k1 = sample_keys(ids, 0), sample_keys(ids, 1)
    assert torch.equal(k0, sample_keys(ids.clone(), 0))
    assert (k0 != k1).all()
    assert len(set(k0.tolist())) == 100
    assert (k0 >= 0).all() and (k0 <= MASK32).all()
    flips = keyed_uniform(k0, 1, 0, STREAM_FLIP) < 0.5
    assert not torch.equal(flips, keyed_uniform(k1, 1, 0, STREAM_FLIP) < 0.5)


def _named_class_tree(root, classes, per_class=3):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)).save(root / name / f"{i}.png")


def test_val_root_labels_follow_training_class_numbers(tmp_path, monkeypatch):
    from mimkit.config import load_config, resolved
    from mimkit.data.datasets import build_data
    from mimkit.data.folder import FolderError

    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    _named_class_tree(tmp_path / "train", ["apple", "banana", "cherry"])
    _named_class_tree(tmp_path / "val", ["cherry"])  # the val tree lacks two classes: its only class is #2 in train
    cfg = resolved(
        load_config(
            None,
            [
                "data.name=folder",
                f"data.root={tmp_path / 'train'}",
                f"data.val_root={tmp_path / 'val'}",
                "data.img_size=8",
                "model.name=mim_vit_femto",
                "model.patch_size=4",
            ],
        )
    )
    bundle = build_data(cfg, log=lambda *_: None)
    assert bundle.heldout.labels.tolist() == [2, 2, 2]
    _named_class_tree(tmp_path / "val2", ["durian"])
    cfg2 = resolved(
        load_config(
            None,
            [
                "data.name=folder",
                f"data.root={tmp_path / 'train'}",
                f"data.val_root={tmp_path / 'val2'}",
                "data.img_size=8",
                "model.name=mim_vit_femto",
                "model.patch_size=4",
            ],
        )
    )
    with pytest.raises(FolderError, match="durian"):
        build_data(cfg2, log=lambda *_: None)


def test_download_verifies_checksums_and_never_leaves_bad_files(tmp_path, monkeypatch):
    """The download path with a local file:// mirror: verified files land, a wrong checksum leaves nothing."""
    import gzip
    import hashlib

    from mimkit.data import fashion_mnist as fm

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    md5 = {}
    for name in fm.FILES.values():
        (mirror / name).write_bytes(gzip.compress(name.encode()))
        md5[name] = hashlib.md5((mirror / name).read_bytes()).hexdigest()
    monkeypatch.setattr(fm, "OFFICIAL_MD5", md5)
    fm.download(tmp_path / "ok", mirror=mirror.as_uri() + "/")
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == sorted(fm.FILES.values())
    monkeypatch.setattr(fm, "OFFICIAL_MD5", {**md5, "t10k-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(fm.DataNotFoundError, match="MD5"):
        fm.download(tmp_path / "bad", mirror=mirror.as_uri() + "/")
    assert not (tmp_path / "bad" / "t10k-images-idx3-ubyte.gz").exists()
    assert not list((tmp_path / "bad").glob("*.part"))


def test_every_stream_is_a_stream(tmp_path):
    """The Engine's one data interface (mimkit.data.stream.Stream): the in-memory stream, the tar-shard stream and
    the bench's fixed batches all provide get, epoch_of and close."""
    import inspect

    from mimkit.bench.suite import FixedBatchStream
    from mimkit.data.loader import TrainStream
    from mimkit.data.stream import Stream
    from mimkit.data.webdataset import ShardStream

    for cls in (TrainStream, ShardStream, FixedBatchStream):
        for name in ("get", "epoch_of", "close"):
            assert callable(getattr(cls, name, None)), (cls, name)
        assert list(inspect.signature(cls.get).parameters) == ["self", "step", "micro"], cls
    from conftest import tiny_config

    fixed = FixedBatchStream(resolved(tiny_config()), torch.device("cpu"))
    assert isinstance(fixed, Stream) and fixed.get(1, 0)["images"].shape[0] == 16
    assert not isinstance(object(), Stream)
