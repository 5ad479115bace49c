"""Writing shards: `mimkit shards` from an image folder or Fashion-MNIST, and synthetic JPEG shards for tests and
benchmarks."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

from mimkit.data import device_decode, fashion_mnist, folder
from mimkit.data.webdataset.index import LABEL_EXTENSION
from mimkit.engine.atomic import atomic_write_bytes


def _encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(payload), 0o644, 0  # fixed metadata: same input, same bytes
    tar.addfile(info, io.BytesIO(payload))


_MAGIC_EXTENSIONS = {device_decode.JPEG_MAGIC: "jpg", b"\x89PNG": "png"}


def _image_member(item: np.ndarray | str | Path | bytes) -> tuple[str, bytes]:
    """(extension, payload) of one image given to write_shards."""
    if isinstance(item, (str, Path)):
        return Path(item).suffix.lower().lstrip("."), Path(item).read_bytes()
    if isinstance(item, bytes):
        ext = next((e for magic, e in _MAGIC_EXTENSIONS.items() if item.startswith(magic)), None)
        if ext is None:
            raise ValueError("write_shards takes encoded images as JPEG or PNG bytes")
        return ext, item
    return "png", _encode_png(item)


def write_shards(
    images: np.ndarray | Sequence[str | Path | bytes],
    labels: Sequence[int] | np.ndarray | None,
    out_dir: str | Path,
    per_shard: int = 1000,
    prefix: str = "shard",
) -> list[Path]:
    """Write `prefix-000000.tar`, ... with `per_shard` samples each, keys numbered in input order (shuffle first
    if the order is sorted by class: the held-out shard is the last one). `images`: uint8 (N, H, W) or
    (N, H, W, C) arrays, stored as PNG; image files, whose bytes are copied as they are; or encoded JPEG / PNG
    bytes. Returns the paths."""
    if per_shard < 1:
        raise ValueError(f"per_shard: {per_shard} must be >= 1")
    n = len(images)
    if labels is not None and len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    width = max(6, len(str(max(n - 1, 0))))
    out_dir = Path(out_dir)
    written = []
    for number, start in enumerate(range(0, n, per_shard)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(start, min(n, start + per_shard)):
                key = f"{i:0{width}d}"
                ext, payload = _image_member(images[i])
                _add_member(tar, f"{key}.{ext}", payload)
                if labels is not None:
                    _add_member(tar, f"{key}.{LABEL_EXTENSION}", str(int(labels[i])).encode())
        path = out_dir / f"{prefix}-{number:06d}.tar"
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written


def write_shards_from(
    source: str, out_dir: str | Path, per_shard: int = 1000, split: str = "train", prefix: str | None = None
) -> list[Path]:
    """Shards from 'fashion-mnist' (its `split`; downloaded if needed) or from an image folder (class folders
    become .cls labels, numbered like data.name=folder numbers them). A folder is written in a seeded shuffled
    order: scanned files come sorted by class, and every shard (the held-out last one included) should hold a mix."""
    if source == "fashion-mnist":
        images, labels = fashion_mnist.load_split(fashion_mnist.locate(None), split)
        return write_shards(images, labels, out_dir, per_shard, prefix or f"fmnist-{split}")
    index = folder.scan(source)
    order = np.random.default_rng(0).permutation(len(index.files))
    labels = [index.labels[i] for i in order] if index.labels is not None else None
    return write_shards([index.files[i] for i in order], labels, out_dir, per_shard, prefix or "shard")


def synthetic_jpegs(count: int, width: int, height: int, quality: int = 90, seed: int = 0) -> list[bytes]:
    """`count` JPEGs of smooth random colour fields with pixel noise: ImageNet-like sizes in bytes (about 75 KB at
    500x375) and decode cost, for benchmarking the input pipeline without a data set."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (max(1, height // 32), max(1, width // 32), 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        noisy = np.clip(field + rng.integers(-20, 21, field.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def write_synthetic_shards(
    out_dir: str | Path,
    count: int,
    width: int = 500,
    height: int = 375,
    per_shard: int = 1000,
    distinct: int = 256,
    classes: int = 1000,
    prefix: str = "synthetic",
) -> list[Path]:
    """`count` samples of `distinct` synthetic JPEGs (reused in turn: decoding costs the same) with seeded random
    labels: shards shaped like ImageNet's for `mimkit bench loader` on any machine."""
    if count < 1 or distinct < 1:
        raise ValueError(f"count ({count}) and distinct ({distinct}) must be >= 1")
    images = synthetic_jpegs(min(distinct, count), width, height)
    labels = np.random.default_rng(1).integers(0, classes, count)
    return write_shards([images[i % len(images)] for i in range(count)], labels, out_dir, per_shard, prefix)
