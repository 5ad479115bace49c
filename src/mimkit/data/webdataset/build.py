"""`build_data` for `data.name=webdataset`: the training shards, the held-out shards (data.val_root or the last
training shard), decoded held-out images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from mimkit.data.imageset import DataBundle
from mimkit.data.webdataset.index import HELDOUT_ID_OFFSET, index_shards
from mimkit.data.webdataset.paths import ShardError, shard_paths
from mimkit.data.webdataset.shardset import ShardSet
from mimkit.errors import ConfigError


def _split_heldout(paths: list[Path], cfg: Any) -> tuple[list[Path], list[Path], str]:
    """(training shards, held-out shards, where the held-out set comes from): data.val_root's shards, else the
    last training shard."""
    d = cfg.data
    if d.val_root:
        return paths, shard_paths(d.val_root, "data.val_root"), f"val_root {d.val_root}"
    if len(paths) < 2:
        raise ShardError(
            f"data.root '{d.root}' has one shard: without data.val_root the last shard is held out, "
            "which leaves nothing to train on; write more shards or set data.val_root"
        )
    return paths[:-1], paths[-1:], f"last shard {paths[-1].name}"


def build_webdataset(cfg: Any, log: Callable = print) -> DataBundle:
    """Training shards as a ShardSet (streamed) and the held-out shards decoded into memory."""
    d = cfg.data
    train_paths, held_paths, source = _split_heldout(shard_paths(d.root), cfg)

    def shard_set(paths: list[Path], decode: str = "pil") -> ShardSet:
        return ShardSet(
            index_shards(paths, d.num_workers, log), d.decode_size, d.in_chans, d.num_workers, d.shuffle_buffer, decode
        )

    train, held = shard_set(train_paths, d.decode), shard_set(held_paths)
    for name, shards in (("training", train), ("held-out", held)):
        if len(shards) == 0:
            raise ShardError(f"the {name} shards hold no images (members named KEY.jpg/.jpeg/.png/.webp/.bmp)")
    heldout, skipped = held.decode(np.arange(len(held)), id_offset=HELDOUT_ID_OFFSET)
    if len(heldout) == 0:
        raise ShardError(f"no held-out image could be read ({source}, {len(skipped)} unreadable)")
    if skipped:
        log(f"[data] skipped {len(skipped)} unreadable held-out image(s), e.g. {skipped[0]}")
    classes: list[str] = []
    if train.labels is not None:  # class names are not in shards: classes are numbered
        top = max(int(train.labels.max()), int(heldout.labels.max()) if heldout.labels is not None else -1)
        classes = [str(c) for c in range(top + 1)]
    return DataBundle(train, heldout, source, classes, skipped)


def require_in_memory(data: DataBundle, what: str) -> None:
    """A clear error for tools that need the whole training set decoded, which shards never are."""
    if isinstance(data.train, ShardSet):
        raise ConfigError(
            f"{what} needs the whole training set in memory; data.name=webdataset streams it from "
            "shards (use data.name=folder on the extracted images)"
        )
