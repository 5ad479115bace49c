"""The output paths a command writes to: refused at start when they cannot be written (an empty path, an existing
file where a directory is wanted, a path under a file, a read-only place), and one writer per run directory.

The lock is an advisory `fcntl.flock` on RUN/.mimkit.lock, taken by the process that writes the run (rank 0 under
torchrun) for as long as it runs. The kernel drops it when that process ends, however it ends, so a lock left by
a killed process never blocks the next one; the file only records the holder's PID for the message. A second
process on the same directory stops at once, naming that PID, instead of interleaving its metrics and pruning the
first one's checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from mimkit.errors import UserError

LOCK_NAME = ".mimkit.lock"
_HELD: dict[str, int] = {}  # resolved run directory -> nesting depth in this process (pretrain inside compare)


class OutputPathError(UserError, OSError):
    """An output path that cannot be written; the CLI reports it in one line (exit 2)."""


class RunDirInUse(UserError, RuntimeError):
    """Another process holds the run directory's lock."""


def usable_out_dir(path: str | Path) -> Path:
    """Refuse `path` unless it is, or can be created as, a writable directory. Nothing is created here: a command
    refused later (a bad config) leaves no directory behind."""
    text = str(path)
    if not text.strip():
        raise OutputPathError("--out is empty: name a directory for the run, e.g. --out runs/my-run")
    out = Path(text)
    existing = next((p for p in [out, *out.absolute().parents] if p.exists()), None)
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is" if parent == out else f"lies under '{parent}', which is"
            raise OutputPathError(f"--out '{out}' {where} a file, not a directory: choose another path")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == out else f"cannot be created: '{existing}' is not writable"
        raise OutputPathError(f"--out '{out}' {what} by this user: choose another path or fix permissions")
    return out


def usable_out_file(path: str | Path) -> Path:
    """Check that a file can be written at `path` (its directory is created when missing)."""
    text = str(path)
    if not text.strip():
        raise OutputPathError("--out is empty: name the file to write")
    out = Path(text)
    if out.is_dir():
        raise OutputPathError(f"--out '{out}' is a directory; name a file inside it, e.g. '{out / 'out.json'}'")
    usable_out_dir(out.parent if str(out.parent) else ".")
    return out


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold RUN/.mimkit.lock for the block (re-entrant within one process); `enabled=False` (ranks > 0) skips."""
    if not enabled:
        yield
        return
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _holder(fd)
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise RunDirInUse(
                f"'{run_dir}' is in use by another mimkit process (PID {holder}); wait for it to finish, stop it, "
                "or choose another --out"
            ) from None
        raise  # ENOLCK and the like: a file system without locks is an I/O problem, reported as such
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"
