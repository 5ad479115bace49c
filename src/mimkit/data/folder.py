"""Image folders (ImageFolder-style labelled trees or flat unlabelled trees), decoded ONCE into a uint8 cache.

Decoding happens in a pool of processes; each image is resized (shorter side) and centre-cropped to a square of
`decode_size` and stored in a numpy memmap under the cache directory, so every later epoch, run and process reads
raw uint8 pixels. Unreadable files and directories, and images above `data.max_pixels` (decompression bombs),
are skipped, counted and reported, never a crash; file names may hold any bytes (shown with escapes).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from mimkit.errors import UserError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# data.max_pixels' default: PIL's own decompression-bomb threshold (width x height); larger images are skipped
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class FolderError(UserError, ValueError):
    """A missing or empty image folder: a user error with a clear message."""


@dataclass
class FolderIndex:
    files: list[Path]
    labels: list[int] | None
    classes: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # directories the scan could not list


def shown(path: str | Path) -> str:
    """A path as text that can always be printed: bytes that are not UTF-8 appear as escapes."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def scan(root: str | Path) -> FolderIndex:
    """Labelled when every image sits under a top-level class folder; flat (unlabelled) otherwise. Directories
    that cannot be listed are recorded (and reported as skipped), not silently dropped."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FolderError(f"image folder '{root}' does not exist (set data.root to a directory of images)")
    unreadable: list[str] = []
    files = []
    # followlinks: class folders are often symlinks into another tree (as Path.rglob followed them)
    walk = os.walk(root, onerror=lambda err: unreadable.append(str(err.filename)), followlinks=True)
    for directory, subdirs, names in walk:
        subdirs.sort()
        files += [Path(directory) / n for n in names if Path(n).suffix.lower() in EXTENSIONS]
    files = sorted(p for p in files if p.is_file())
    if not files:
        raise FolderError(
            f"image folder '{root}' has no images ({', '.join(sorted(EXTENSIONS))}, searched recursively)"
        )
    top_level = [p for p in files if p.parent == root]
    if top_level:
        return FolderIndex(files, None, unreadable=unreadable)
    classes = sorted({p.relative_to(root).parts[0] for p in files})
    lookup = {name: i for i, name in enumerate(classes)}
    labels = [lookup[p.relative_to(root).parts[0]] for p in files]
    return FolderIndex(files, labels, classes, unreadable)


def decode_image(path: Path | IO[bytes], size: int, mode: str, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """RGB or L uint8 array (size, size, C): resize the shorter side, centre crop. None when unreadable, or when
    the header declares more than `max_pixels` pixels (checked before any decoding: a decompression bomb is refused
    without being expanded). `path` may also be a binary file object (an image read out of a tar shard)."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                return None
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I;16") or img.mode in ("I", "F"):
                img = _to_8bit(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            img = img.convert(mode)
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
            arr = np.asarray(img, dtype=np.uint8)
    except Exception:  # noqa: BLE001 - any decoder failure means "skip this file"
        return None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit gray images: rescale to 8 bits (PIL's convert would clip everything above 255)."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / ((hi - lo) or 1.0) * 255.0
    elif img.mode.startswith("I;16") or arr.max() > 255:
        arr = arr / 257.0  # 0..65535 -> 0..255
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="L")


def _decode_chunk(args: tuple[list[str], int, str, int]) -> list[np.ndarray | None]:
    paths, size, mode, max_pixels = args
    return [decode_image(Path(p), size, mode, max_pixels) for p in paths]


def _cache_key(index: FolderIndex, size: int, mode: str, max_pixels: int) -> str:
    digest = hashlib.sha1(f"{size}|{mode}|{max_pixels}".encode())
    for path in index.files:
        stat = path.stat()
        digest.update(os.fsencode(path) + f"|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cache_root(kind: str = "decoded") -> Path:
    """Where mimkit keeps what it derives from data sets ($MIMKIT_CACHE, else ~/.cache/mimkit), per kind."""
    return Path(os.environ.get("MIMKIT_CACHE", "~/.cache/mimkit")).expanduser() / kind


@dataclass
class DecodedFolder:
    images: np.ndarray  # (N, C, S, S) uint8, memmap
    labels: np.ndarray | None
    classes: list[str]
    skipped: list[str]


def load_folder(
    root: str | Path, size: int, channels: int, workers: int = 0, log=print, max_pixels: int = MAX_PIXELS
) -> DecodedFolder:
    """Decode every readable image once (cached by file list, sizes and mtimes)."""
    index = scan(root)
    mode = "L" if channels == 1 else "RGB"
    key = _cache_key(index, size, mode, max_pixels)
    directory = cache_root()
    directory.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = directory / f"{key}.u8", directory / f"{key}.json"
    if meta_path.is_file() and data_path.is_file():
        meta = json.loads(meta_path.read_text())
    else:
        meta = _decode_all(index, size, mode, channels, workers, data_path, meta_path, log, max_pixels)
    count = meta["count"]
    skipped = [*meta["skipped"], *(f"{d} (directory not readable)" for d in index.unreadable)]
    if count == 0:
        raise FolderError(f"no image in '{shown(root)}' could be read ({len(skipped)} skipped)")
    images = np.memmap(data_path, dtype=np.uint8, mode="r", shape=(count, channels, size, size))
    labels = np.asarray(meta["labels"], dtype=np.int64) if meta["labels"] is not None else None
    if meta["skipped"]:
        log(
            f"[data] skipped {len(meta['skipped'])} image(s) in {shown(root)} that could not be read or exceed "
            f"data.max_pixels={max_pixels}, e.g. {shown(meta['skipped'][0])}"
        )
    if index.unreadable:
        log(
            f"[data] skipped {len(index.unreadable)} director(y/ies) in {shown(root)} that could not be listed, e.g. "
            f"{shown(index.unreadable[0])}: their images are not used"
        )
    return DecodedFolder(images, labels, index.classes, skipped)


def _decode_all(
    index: FolderIndex,
    size: int,
    mode: str,
    channels: int,
    workers: int,
    data_path: Path,
    meta_path: Path,
    log,
    max_pixels: int = MAX_PIXELS,
) -> dict:
    log(f"[data] decoding {len(index.files)} images to {size}x{size} {mode} (once; cached in {data_path.parent})")
    chunk = 256
    jobs = [
        ([str(p) for p in index.files[i : i + chunk]], size, mode, max_pixels)
        for i in range(0, len(index.files), chunk)
    ]
    tmp_path = data_path.with_suffix(f".{os.getpid()}.part")
    kept_labels: list[int] = []
    skipped: list[str] = []
    count = 0
    with open(tmp_path, "wb") as out:
        if workers > 0:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_decode_chunk, jobs)
                count = _write_results(results, index, out, kept_labels, skipped)
        else:
            count = _write_results(map(_decode_chunk, jobs), index, out, kept_labels, skipped)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp_path, data_path)
    meta = {"count": count, "labels": kept_labels if index.labels is not None else None, "skipped": skipped}
    tmp_meta = meta_path.with_suffix(f".{os.getpid()}.part")
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, meta_path)
    return meta


def _write_results(results, index: FolderIndex, out, kept_labels: list[int], skipped: list[str]) -> int:
    position = 0
    count = 0
    for chunk_result in results:
        for arr in chunk_result:
            path = index.files[position]
            if arr is None:
                skipped.append(str(path))
            else:
                out.write(np.ascontiguousarray(arr.transpose(2, 0, 1)).tobytes())
                if index.labels is not None:
                    kept_labels.append(index.labels[position])
                count += 1
            position += 1
    return count
