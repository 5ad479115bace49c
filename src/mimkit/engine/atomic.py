"""Crash-safe writes: a file is either its old content or its complete new content, never half of one."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename over the target, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def default_file_mode() -> int:
    """The mode a plain open() gives a new file under the process umask (0644 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, its metadata put in a fixed order (canonical_header), written whole under a
    temporary name, fsync'd and renamed into place, with the permissions of the run's other files (safetensors
    itself creates its files readable by the owner only)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, default_file_mode())
    with open(tmp, "rb+") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = canonical_header(fh.read(size))
        if header is not None:  # rewritten in place: the same length, the tensors' data untouched
            fh.seek(8)
            fh.write(header)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def canonical_header(raw: bytes) -> bytes | None:
    """A safetensors header with its `__metadata__` entries sorted by key, in as many bytes as `raw`; None when
    there is nothing to reorder or the layout is not the one expected. safetensors writes the metadata in a hash
    map's order, which changes from one save to the next, so two exports of one run had different digests, and a
    comparison that keys an exported encoder by its content (weights/identity.py) ran its cells again. The tensors'
    entries keep the order the library gave them (already fixed)."""
    header = json.loads(raw)
    if not isinstance(header.get("__metadata__"), dict):
        return None
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    body = raw.rstrip(b" ")
    return text + raw[len(body) :] if len(text) == len(body) else None


def atomic_torch_save(obj, path: str | Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_symlink(target: str, link: str | Path) -> None:
    """Point `link` at `target` (relative), replacing any existing link in one rename."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.lnk")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)
