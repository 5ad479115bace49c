"""Shard lists: `data.root` as a directory of .tar files, a glob or a brace pattern, and the error for missing
or unreadable shards."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from mimkit.data import folder

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_GLOB = re.compile(r"[*?\[]")


class ShardError(folder.FolderError):
    """Missing, empty or unreadable shards: a user error with a clear message (the CLI exits 2)."""


def expand_braces(pattern: str) -> list[str]:
    """`train-{000..002}.tar` -> train-000.tar, train-001.tar, train-002.tar: numeric ranges, as many as the
    pattern has, each padded to the width of its first bound."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    if int(last) < int(first):
        raise ShardError(f"shard pattern '{pattern}': the range {match.group(0)} counts down")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [path for n in range(int(first), int(last) + 1) for path in expand_braces(f"{head}{n:0{len(first)}d}{tail}")]


def shard_paths(root: str, key: str = "data.root") -> list[Path]:
    """The shards `root` names, in order: a directory's *.tar by name, a glob's matches by name, or a brace
    pattern's expansion in its own order (globs inside a pattern are sorted)."""
    fix = (
        f"set {key} to a directory of .tar shards, a glob such as /data/train-*.tar or a brace pattern such as "
        "/data/train-{000000..000099}.tar (mimkit.data.webdataset.write_shards writes shards)"
    )
    text = os.path.expanduser(str(root))
    if os.path.isdir(text):
        paths = sorted(Path(text).glob("*.tar"))
        if not paths:
            raise ShardError(f"{key} '{root}' is a directory without .tar shards; {fix}")
        return paths
    found: list[str] = []
    missing: list[str] = []
    for pattern in expand_braces(text):
        if _GLOB.search(pattern):
            matches = sorted(glob.glob(pattern))
        else:
            matches = [pattern] if os.path.isfile(pattern) else []
        found += matches
        if not matches:
            missing.append(pattern)
    if missing:
        raise ShardError(f"{key} '{root}': {len(missing)} shard(s) not found, e.g. '{missing[0]}'; {fix}")
    return [Path(p) for p in dict.fromkeys(found)]
