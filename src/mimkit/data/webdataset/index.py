"""The index of a shard: each sample's image (byte offset and size) and label, read once from the tar headers and
cached per (path, size, mtime)."""

from __future__ import annotations

import hashlib
import io
import itertools
import posixpath
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mimkit.data import folder
from mimkit.data.webdataset.paths import ShardError
from mimkit.engine.atomic import atomic_write_bytes

IMAGE_EXTENSIONS = {ext.lstrip(".") for ext in folder.EXTENSIONS}
LABEL_EXTENSION = "cls"
INDEX_VERSION = 1
ID_STRIDE = 10_000_000  # training sample id = (shard + 2) * ID_STRIDE + position in the shard
HELDOUT_ID_OFFSET = 10_000_000  # held-out ids, as the other loaders number them: 10_000_000 + position


@dataclass
class ShardIndex:
    """Where each sample's image lies in one shard (byte offset and size) and its label (-1: none)."""

    path: Path
    offsets: np.ndarray  # (n,) int64
    sizes: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.offsets)


def _sample_key(name: str) -> tuple[str, str]:
    """'dir/000123.seg.png' -> ('dir/000123', 'seg.png'): WebDataset's key and extension."""
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem), ext.lower()


def _read_label(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> int:
    text = tar.extractfile(member).read().decode("utf-8", "replace").strip()
    try:
        return int(text)
    except ValueError:
        raise ShardError(
            f"'{path}' member {member.name}: a .cls member must hold an integer label, found '{text[:40]}'"
        ) from None


def scan_shard(path: Path) -> ShardIndex:
    """One pass over the tar headers: image bytes are skipped over, only the small .cls members are read."""
    rows: list[tuple[int, int, int]] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = ((_sample_key(m.name), m) for m in tar if m.isfile())
            for _key, group in itertools.groupby(members, key=lambda item: item[0][0]):
                image, label = None, -1
                for (_, ext), member in group:
                    if ext in IMAGE_EXTENSIONS and image is None:
                        image = member
                    elif ext == LABEL_EXTENSION:
                        label = _read_label(tar, member, path)
                if image is not None:
                    rows.append((image.offset_data, image.size, label))
    except (tarfile.TarError, OSError) as err:
        raise ShardError(
            f"'{path}' is not a readable shard ({err}); shards must be plain, uncompressed .tar files"
        ) from None
    if len(rows) >= ID_STRIDE:
        raise ShardError(f"'{path}' holds {len(rows)} samples; shards of up to {ID_STRIDE - 1} are supported")
    table = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return ShardIndex(path, table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy())


def _index_cache_file(path: Path) -> Path:
    stat = path.stat()
    key = f"{INDEX_VERSION}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return folder.cache_root("shard-index") / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.npz"


def load_index(path: Path) -> tuple[ShardIndex, bool]:
    """(index, was cached): from the cache when the shard is unchanged, else scanned and cached (atomically, in
    the mimkit cache: the shards' own directory may be read-only)."""
    cache = _index_cache_file(path)
    try:
        with np.load(cache, allow_pickle=False) as saved:
            return ShardIndex(path, saved["offsets"], saved["sizes"], saved["labels"]), True
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # not cached yet, or damaged: scan
        pass
    index = scan_shard(path)
    buffer = io.BytesIO()
    np.savez(buffer, offsets=index.offsets, sizes=index.sizes, labels=index.labels)
    try:
        atomic_write_bytes(cache, buffer.getvalue())
    except OSError:  # an unwritable cache only costs a rescan next time
        pass
    return index, False


def index_shards(paths: list[Path], workers: int = 0, log: Callable = print) -> list[ShardIndex]:
    """Every shard's index; uncached shards are scanned by `workers` threads (the scan waits on disk, not CPU)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(load_index, paths))
    scanned = sum(not cached for _, cached in results)
    if scanned:
        log(f"[data] indexed {scanned} shard(s) (once; cached in {folder.cache_root('shard-index')})")
    return [index for index, _ in results]
