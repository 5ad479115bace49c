"""Fashion-MNIST from its four idx `.gz` files: local copies first, then a verified download."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from mimkit.errors import UserError

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# MD5 of the official gzip files as served by the dataset's authors (repackaged copies, e.g. Debian's, are
# recompressed and differ; local files are checked by their idx headers and sizes instead).
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
EXPECTED_COUNTS = {"train": 60000, "test": 10000}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class DataNotFoundError(UserError, FileNotFoundError):
    """Raised with instructions on how to get the data."""


def candidate_dirs(root: str | None) -> list[Path]:
    dirs = []
    if root:
        dirs.append(Path(root).expanduser())
    if os.environ.get("MIMKIT_DATA"):
        dirs.append(Path(os.environ["MIMKIT_DATA"]).expanduser() / "fashion-mnist")
    dirs += [DEBIAN_DIR, cache_dir()]
    return dirs


def cache_dir() -> Path:
    return Path(os.environ.get("MIMKIT_CACHE", "~/.cache/mimkit")).expanduser() / "fashion-mnist"


def _has_all(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES.values())


def md5sum(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def download(target: Path, mirror: str = MIRROR) -> None:
    """Fetch the four files, verify their MD5, move each into place only once verified."""
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        dest = target / name
        if dest.is_file() and md5sum(dest) == OFFICIAL_MD5[name]:
            continue
        with tempfile.NamedTemporaryFile(dir=target, delete=False, suffix=".part") as tmp:
            with urllib.request.urlopen(mirror + name, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        got = md5sum(Path(tmp.name))
        if got != OFFICIAL_MD5[name]:
            os.unlink(tmp.name)
            raise DataNotFoundError(f"downloaded {name} has MD5 {got}, expected {OFFICIAL_MD5[name]}")
        os.replace(tmp.name, dest)


def locate(root: str | None, allow_download: bool = True) -> Path:
    """The first directory holding all four files; downloads into the cache when none does. A `root` the user
    named is the only place looked in: a wrong path is an error, never a silent fall-back to another copy."""
    if root:
        directory = Path(root).expanduser()
        if _has_all(directory):
            return directory
        missing = [name for name in FILES.values() if not (directory / name).is_file()]
        where = "does not exist" if not directory.exists() else f"lacks {', '.join(missing)}"
        raise DataNotFoundError(
            f"data.root '{root}' {where}: point it at the directory holding Fashion-MNIST's four idx .gz files, or "
            "drop data.root to use the installed copy (apt-get install dataset-fashion-mnist)"
        )
    searched = candidate_dirs(root)
    for directory in searched:
        if _has_all(directory):
            return directory
    errors = ""
    if allow_download:
        try:
            download(cache_dir())
            return cache_dir()
        except (OSError, DataNotFoundError) as err:
            errors = f" Download failed: {err}."
    raise DataNotFoundError(
        "Fashion-MNIST not found (looked in "
        + ", ".join(map(str, searched))
        + ")."
        + errors
        + " Get it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four idx .gz files "
        "in a directory and pass --set data.root=DIR (or set MIMKIT_DATA=PARENT with a fashion-mnist/ folder)."
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (gzip): magic 0x0000 08 NDIM, big-endian sizes, then uint8 data."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:  # not gzip, or a gzip stream cut short
        raise DataNotFoundError(f"{path} is not a readable gzip file ({err}); re-download it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataNotFoundError(f"{path} is not an idx uint8 file (bad magic); re-download it")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataNotFoundError(f"{path} has a truncated idx header; re-download it")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataNotFoundError(f"{path} is truncated: header says {shape}, found {body.size} bytes")
    return body.reshape(shape)


def load_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) for split 'train' or 'test'."""
    images = read_idx(directory / FILES[f"{split}_images"])
    labels = read_idx(directory / FILES[f"{split}_labels"]).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[0] != EXPECTED_COUNTS[split]:
        raise DataNotFoundError(
            f"Fashion-MNIST {split} split in {directory} has {images.shape[0]} images and "
            f"{labels.shape[0]} labels, expected {EXPECTED_COUNTS[split]}"
        )
    return images, labels
