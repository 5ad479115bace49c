"""Hostile image folders (issue 20, item 2): file names that are not UTF-8, directories that cannot be listed,
decompression bombs, train/val split folders, and damaged weights to import; each counted or refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli_error, tiny_config
from mimkit.config import ConfigError, resolved
from mimkit.data import folder


def _png(path: Path, side: int = 20, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side), value, np.uint8), mode="L").save(path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_file_names_of_any_bytes_are_decoded_and_printable(tmp_path, cache):
    root = tmp_path / "tree"
    _png(root / "a" / "plain.png")
    odd = os.fsdecode(b"\xff\xfe-latin1-\xe9.png")  # not UTF-8: a surrogate-escaped str
    _png(root / "a" / odd, value=30)
    _png(root / "b" / "x.png", value=200)
    lines = []
    decoded = folder.load_folder(root, 16, 1, log=lines.append)
    assert len(decoded.images) == 3 and decoded.skipped == []
    assert sorted(decoded.labels.tolist()) == [0, 0, 1]
    for line in lines:
        line.encode("utf-8")  # every log line can be printed
    assert "\\xff" in folder.shown(root / "a" / odd)
    again = folder.load_folder(root, 16, 1, log=lines.append)  # the cache key handles the name too
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(decoded.images))


def test_directories_that_cannot_be_listed_are_counted_not_dropped(tmp_path, cache, monkeypatch):
    root = tmp_path / "tree"
    for cls in ("a", "b", "c"):
        for i in range(2):
            _png(root / cls / f"{i}.png", value=40 * i + 10)
    real_walk = os.walk

    def walk_with_a_locked_directory(top, onerror=None, **kw):
        for directory, subdirs, names in real_walk(top, onerror=onerror, **kw):
            if Path(directory).name == "b":  # as os.walk reports a directory it cannot list
                onerror(PermissionError(13, "Permission denied", directory))
                continue
            yield directory, subdirs, names

    monkeypatch.setattr(folder.os, "walk", walk_with_a_locked_directory)
    lines = []
    decoded = folder.load_folder(root, 16, 1, log=lines.append)
    assert len(decoded.images) == 4
    assert decoded.skipped == [f"{root / 'b'} (directory not readable)"]
    assert any("could not be listed" in line for line in lines)


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists every directory")
def test_a_really_unreadable_directory_is_counted(tmp_path, cache):
    root = tmp_path / "tree"
    _png(root / "a" / "0.png")
    _png(root / "b" / "sub" / "0.png")
    os.chmod(root / "b" / "sub", 0)
    try:
        decoded = folder.load_folder(root, 16, 1, log=lambda *_: None)
    finally:
        os.chmod(root / "b" / "sub", 0o755)
    assert any("directory not readable" in s for s in decoded.skipped)


def test_images_above_the_pixel_limit_are_skipped_undecoded(tmp_path, cache, monkeypatch):
    root = tmp_path / "tree"
    _png(root / "small.png", side=20)  # 400 px
    _png(root / "big.png", side=40)  # 1,600 px
    opened = []
    real_open = Image.open

    def spy(path, *a, **k):
        img = real_open(path, *a, **k)
        original_load = img.load
        img.load = lambda: opened.append(Path(path).name) or original_load()
        return img

    monkeypatch.setattr(folder.Image, "open", spy)
    decoded = folder.load_folder(root, 16, 1, log=lambda *_: None, max_pixels=1000)
    assert len(decoded.images) == 1 and [Path(s).name for s in decoded.skipped] == ["big.png"]
    assert "big.png" not in opened  # refused from its header, never decompressed
    assert len(folder.load_folder(root, 16, 1, log=lambda *_: None, max_pixels=2000).images) == 2
    with pytest.raises(ConfigError, match="data.max_pixels"):
        resolved(tiny_config("data.max_pixels=0"))


def test_a_tree_of_train_and_val_folders_is_read_as_splits_not_classes(tmp_path, cache):
    from mimkit.data.datasets import build_data

    root = tmp_path / "tree"
    for split, n in (("train", 6), ("val", 4)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _png(root / split / cls / f"{i}.png", value=20 * i + (100 if cls == "dog" else 0))
    lines = []
    cfg = resolved(tiny_config("data.name=folder", f"data.root={root}", "data.in_chans=1"))
    data = build_data(cfg, lines.append)
    assert data.classes == ["cat", "dog"]  # not ["train", "val"]
    assert len(data.train) == 12 and len(data.heldout) == 8
    assert any("holds train/ and val/" in line for line in lines)
    _png(root / "bird" / "0.png")  # a class folder beside the splits: ambiguous
    with pytest.raises(ConfigError, match="split folders"):
        build_data(cfg, lambda *_: None)


@pytest.mark.parametrize("name, content", [("model.safetensors", b"garbage"), ("pytorch_model.bin", b"not a zip")])
def test_importing_damaged_hf_weights_is_one_line(capsys, tmp_path, name, content):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        '{"model_type": "vit_mae", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, '
        '"intermediate_size": 128, "image_size": 32, "patch_size": 4, "num_channels": 1, "decoder_hidden_size": 32, '
        '"decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2, "decoder_intermediate_size": 64, '
        '"mask_ratio": 0.75, "norm_pix_loss": false}'
    )
    (hf / name).write_bytes(content)
    err = cli_error(capsys, "import", str(hf), "--out", str(tmp_path / "out"))
    assert f"'{hf / name}' is not a readable weights file" in err


def test_class_folders_that_are_symlinks_are_followed(tmp_path, cache):
    elsewhere = tmp_path / "elsewhere" / "dog"
    _png(elsewhere / "0.png", value=50)
    root = tmp_path / "tree"
    _png(root / "cat" / "0.png", value=200)
    (root / "dog").symlink_to(elsewhere, target_is_directory=True)
    decoded = folder.load_folder(root, 16, 1, log=lambda *_: None)
    assert decoded.classes == ["cat", "dog"] and len(decoded.images) == 2
