"""What identifies a weights source across checkouts: a weights file by its content, anything else by its spelling."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def source_identity(init: Any) -> Any:
    """A weights file (an exported encoder, `timm:NAME@FILE`, the architecture of `scratch:FILE`) is the same model
    wherever the checkout lies: it is keyed by the file's content, so a comparison kept in the repository and
    restored elsewhere reuses its cells. Run directories and everything else keep their written form (a run grows;
    its path is its identity)."""
    if not isinstance(init, str):
        return init
    prefix, file = "", init
    if init.startswith("timm:"):  # timm:NAME@FILE keys by FILE; timm:NAME (the hub's weights) stays as written
        name, _, file = init.partition("@")
        prefix = f"{name}@"
    elif init.startswith("scratch:"):  # scratch:FILE, random weights in FILE's architecture: the same wherever FILE is
        prefix, file = "scratch:", init[len("scratch:") :]
    path = Path(file)
    if not file or not path.is_file():
        return init
    stat = path.stat()
    return f"{prefix}sha256:{_file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}"


def same_source(a: Any, b: Any, recorded: str | None = None) -> bool:
    """Whether `b` names the weights `a` named: the same file content (`recorded`: a's identity when the run
    started, so a file since moved, deleted or changed is judged by what it was), the same directory reached by two
    paths (relative and absolute, or through a link), or else the same spelling. A resumed distillation compares
    its teacher this way, so a run started in one checkout resumes in another whose copy of the teacher file is the
    same, and a teacher file overwritten in place is caught."""
    then = recorded if recorded is not None else source_identity(a)
    if then == source_identity(b):
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    pa, pb = Path(a), Path(b)
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()
