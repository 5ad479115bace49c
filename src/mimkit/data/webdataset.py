"""`data.name=webdataset`: training images streamed from WebDataset tar shards instead of decoded into memory.

A shard is a plain (uncompressed) .tar whose consecutive members form samples by key, the member name up to the
first dot of its basename: `000123.jpg` (or .jpeg/.png/.webp/.bmp) is the image, an optional `000123.cls` holds an
integer label, other members are ignored.

Each shard is indexed once by walking its tar headers (byte offset and size of each sample's image, its label),
cached per (path, size, mtime). With the index every batch is a pure function of (seed, epoch, rank, world size,
step): a resumed run jumps straight to its step and reads only the images it trains on. The semantics (shard
shuffling, per-rank dealing, shuffle buffer, epoch length, sample ids, unreadable images, held-out shards) are
described in docs/webdataset.md.
"""
from __future__ import annotations

import glob
import hashlib
import io
import itertools
import os
import posixpath
import re
import tarfile
import threading
import weakref
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mimkit.data import device_decode, fashion_mnist, folder
from mimkit.data.datasets import DataBundle, ImageSet
from mimkit.data.loader import augmented_batch, to_device
from mimkit.data.transforms import BatchAugment
from mimkit.data.workers import SHARED_SLOTS, SharedSlots, slot_array, split_evenly, start_pool, stop_pool
from mimkit.engine.atomic import atomic_write_bytes
from mimkit.errors import ConfigError

IMAGE_EXTENSIONS = {ext.lstrip(".") for ext in folder.EXTENSIONS}
LABEL_EXTENSION = "cls"
INDEX_VERSION = 1
ID_STRIDE = 10_000_000  # training sample id = (shard + 2) * ID_STRIDE + position in the shard
HELDOUT_ID_OFFSET = 10_000_000  # held-out ids, as the other loaders number them: 10_000_000 + position
PREFETCH = 2  # micro-batches decoded ahead of the one being trained on
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_GLOB = re.compile(r"[*?\[]")


class ShardError(folder.FolderError):
    """Missing, empty or unreadable shards: a user error with a clear message (the CLI exits 2)."""


# ---------------------------------------------------------------------------------------------------- shard lists
def expand_braces(pattern: str) -> list[str]:
    """`train-{000..002}.tar` -> train-000.tar, train-001.tar, train-002.tar: numeric ranges, as many as the
    pattern has, each padded to the width of its first bound."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    if int(last) < int(first):
        raise ShardError(f"shard pattern '{pattern}': the range {match.group(0)} counts down")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [path for n in range(int(first), int(last) + 1)
            for path in expand_braces(f"{head}{n:0{len(first)}d}{tail}")]


def shard_paths(root: str, key: str = "data.root") -> list[Path]:
    """The shards `root` names, in order: a directory's *.tar by name, a glob's matches by name, or a brace
    pattern's expansion in its own order (globs inside a pattern are sorted)."""
    fix = (f"set {key} to a directory of .tar shards, a glob such as /data/train-*.tar or a brace pattern such as "
           "/data/train-{000000..000099}.tar (mimkit.data.webdataset.write_shards writes shards)")
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


# ---------------------------------------------------------------------------------------------------- the index
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
        raise ShardError(f"'{path}' member {member.name}: a .cls member must hold an integer label, found "
                         f"'{text[:40]}'") from None


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
        raise ShardError(f"'{path}' is not a readable shard ({err}); shards must be plain, uncompressed .tar "
                         "files") from None
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


# ---------------------------------------------------------------------------------------------------- decoding
Member = tuple[str, int, int]  # (shard path, byte offset, size) of one image


def read_payloads(members: Sequence[Member]) -> list[bytes]:
    """The stored bytes of each image, read straight out of its shard by offset."""
    payloads: list[bytes] = []
    handles: dict[str, Any] = {}
    try:
        for path, offset, length in members:
            if path not in handles:
                try:
                    handles[path] = open(path, "rb")
                except OSError as err:
                    raise ShardError(f"shard '{path}' cannot be read any more ({err.strerror}); was it moved or "
                                     "deleted during the run?") from None
            handles[path].seek(offset)
            payloads.append(handles[path].read(length))
    finally:
        for handle in handles.values():
            handle.close()
    return payloads


def decode_members(members: Sequence[Member], size: int, channels: int,
                   out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (n, C, size, size), readable (n,) bool): images read out of their shards and decoded by
    folder.decode_image (`data.decode=pil`), into `out` when given; an unreadable image is a False (and zeros),
    never an exception."""
    images = np.zeros((len(members), channels, size, size), dtype=np.uint8) if out is None else out
    readable = np.zeros(len(members), dtype=bool)
    for i, payload in enumerate(read_payloads(members)):
        array = device_decode.decode_on_host(payload, size, channels)
        readable[i] = array is not None
        images[i] = array if array is not None else 0
    return images, readable


def decode_members_into(members: Sequence[Member], size: int, channels: int, slot: int, row: int) -> np.ndarray:
    """decode_members in a worker, writing the images into rows row.. of shared slot `slot`; returns only
    `readable`, so no pixels travel through the pool's pipe."""
    rows = slot_array(slot, (channels, size, size))[row:row + len(members)]
    return decode_members(members, size, channels, out=rows)[1]


def read_members(members: Sequence[Member], size: int, channels: int) -> device_decode.ReadBatch:
    """`data.decode=device`: the JPEGs' bytes for the device, everything else decoded here by PIL."""
    return device_decode.sort_payloads(read_payloads(members), size, channels)


def read_members_into(members: Sequence[Member], size: int, channels: int, slot: int,
                      row: int) -> device_decode.ReadBatch:
    """read_members in a worker, with the JPEG bytes written into rows row.. of shared slot `slot` (rows of
    PAYLOAD_ROOM bytes, shared by the chunk: a large JPEG may use a small one's room) and sent back as spans; a
    JPEG that does not fit goes through the pipe."""
    batch = read_members(members, size, channels)
    arena = slot_array(slot, (device_decode.PAYLOAD_ROOM,)).reshape(-1)
    cursor, end = row * device_decode.PAYLOAD_ROOM, (row + len(members)) * device_decode.PAYLOAD_ROOM
    for i, payload in enumerate(batch.payloads):
        if payload is not None and cursor + len(payload) <= end:
            arena[cursor:cursor + len(payload)] = np.frombuffer(payload, dtype=np.uint8)
            batch.spans[i], batch.payloads[i] = (cursor, len(payload)), None
            cursor += len(payload)
    return batch


def _chunks(members: Sequence[Member], parts: int) -> list[Sequence[Member]]:
    return [members[i:j] for i, j in split_evenly(len(members), parts)]


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def decode_many(members: Sequence[Member], size: int, channels: int, workers: int = 0) -> tuple[np.ndarray,
                                                                                             np.ndarray]:
    """decode_members over a temporary pool of `workers` processes (held-out shards, fixed train subsets)."""
    if workers <= 0 or len(members) < 2 * workers:
        return decode_members(members, size, channels)
    pool = start_pool(workers)
    try:
        futures = [pool.submit(decode_members, chunk, size, channels) for chunk in _chunks(members, 4 * workers)]
        return _join([f.result() for f in futures])
    finally:
        stop_pool(pool)


def _member_name(path: str, offset: int) -> str:
    """The tar name of the member whose data starts at `offset` (its header is the 512 bytes before), for
    messages; long names may come back shortened."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset - tarfile.BLOCKSIZE)
            return f"{path}:{tarfile.TarInfo.frombuf(fh.read(tarfile.BLOCKSIZE), 'utf-8', 'replace').name}"
    except (OSError, tarfile.TarError, ValueError):
        return f"{path}@{offset}"


# ---------------------------------------------------------------------------------------------------- ShardSet
class ShardSet:
    """Shards seen as one data set of `len(self)` samples, numbered shard after shard. It has what pretraining asks
    of a training set: its size, its labels (from the index: when every sample has a .cls) and `subset`, which
    decodes a few samples (the evaluators' fixed train subset, figures); ShardStream streams the rest."""

    targets = None  # geometric tasks are not streamed

    def __init__(self, shards: list[ShardIndex], decode_size: int, channels: int, num_workers: int = 0,
                 shuffle_buffer: int = 1000, decode: str = "pil"):
        self.shards = shards
        self.decode_size, self.channels = decode_size, channels
        self.decode_on_device = decode == "device"  # data.decode=device: streamed JPEGs decoded by the device
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        self.counts = np.array([len(s) for s in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.shard_of = np.repeat(np.arange(len(shards)), self.counts)
        self.offsets = np.concatenate([s.offsets for s in shards]) if shards else np.zeros(0, np.int64)
        self.sizes = np.concatenate([s.sizes for s in shards]) if shards else np.zeros(0, np.int64)
        labels = np.concatenate([s.labels for s in shards]) if shards else np.zeros(0, np.int64)
        self.labels = torch.from_numpy(labels) if len(labels) and (labels >= 0).all() else None

    def __len__(self) -> int:
        return int(self.counts.sum())

    def ids(self, positions: np.ndarray) -> torch.Tensor:
        """Stable sample ids: (shard + 2) * ID_STRIDE + position in the shard; clear of the held-out ids."""
        shard = self.shard_of[positions]
        return torch.from_numpy((shard + 2) * ID_STRIDE + positions - self.starts[shard])

    def members(self, positions: np.ndarray) -> list[Member]:
        paths = [str(s.path) for s in self.shards]
        return [(paths[s], int(o), int(n)) for s, o, n in
                zip(self.shard_of[positions], self.offsets[positions], self.sizes[positions])]

    def decode(self, positions: np.ndarray, id_offset: int | None = None) -> tuple[ImageSet, list[str]]:
        """(the readable samples at these positions, names of the unreadable ones). Ids are `ids()`, or
        id_offset + position when given (held-out sets)."""
        positions = np.asarray(positions, dtype=np.int64)
        members = self.members(positions)
        images, readable = decode_many(members, self.decode_size, self.channels, self.num_workers)
        ids = self.ids(positions) if id_offset is None else torch.from_numpy(positions + id_offset)
        keep = torch.from_numpy(readable)
        labels = self.labels[torch.from_numpy(positions)][keep] if self.labels is not None else None
        skipped = [_member_name(*members[i][:2]) for i in np.flatnonzero(~readable)]
        return ImageSet(torch.from_numpy(images)[keep], labels, ids[keep]), skipped

    def subset(self, positions: torch.Tensor | np.ndarray) -> ImageSet:
        """These samples decoded into memory (unreadable ones left out): what heldout.fixed_subset takes."""
        return self.decode(np.asarray(positions, dtype=np.int64))[0]

    def per_rank_samples(self, world_size: int) -> int:
        """Samples every rank gets in every epoch whatever the shard permutation: each rank is dealt at least
        len(shards) // world_size shards, so at least the sum of that many smallest shards."""
        return int(np.sort(self.counts)[:len(self.shards) // world_size].sum())


# ---------------------------------------------------------------------------------------------------- ShardStream
def _generator(*parts: Any) -> torch.Generator:
    """A generator seeded by a hash of `parts`: independent streams for (seed, epoch, purpose, rank, ...)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def shuffle_buffer_order(n: int, size: int, generator: torch.Generator, limit: int | None = None) -> np.ndarray:
    """The first `limit` of 0..n-1 in the order a shuffle buffer of `size` emits them (WebDataset's shuffle: fill
    the buffer, then each output is a random slot, refilled from the stream). Only integers are shuffled."""
    limit = n if limit is None else min(limit, n)
    draws = torch.rand(limit, generator=generator, dtype=torch.float64).numpy()
    out = np.empty(limit, dtype=np.int64)
    buffer = list(range(min(size, n)))
    incoming = len(buffer)
    for k in range(limit):
        slot = int(draws[k] * len(buffer))
        out[k] = buffer[slot]
        if incoming < n:
            buffer[slot] = incoming
            incoming += 1
        else:  # the stream is exhausted: drain the buffer
            buffer[slot] = buffer[-1]
            buffer.pop()
    return out


class ShardStream:
    """TrainStream's interface (get(step, micro), epoch_of, batches_per_epoch, ...) over a ShardSet.

    Epoch e: the shards in a (seed, e) permutation, rank r takes every world_size-th from r, reads them in turn
    through a (seed, e, rank) shuffle buffer and keeps the first `per_rank_samples` of that stream (whole micro-
    batches). Batches are addressed like TrainStream's, so a resumed run reads exactly what an unbroken one did.
    Images are decoded by `data.num_workers` persistent processes, PREFETCH micro-batches ahead."""

    def __init__(self, data: ShardSet, augment: BatchAugment, micro_batch: int, accum_steps: int, rank: int,
                 world_size: int, seed: int, device: torch.device, pre_augment=None, views: int = 1,
                 log: Callable = print):
        if len(data.shards) < world_size:
            raise ConfigError(f"{len(data.shards)} training shard(s) for {world_size} processes: every process needs "
                              "at least one shard per epoch; write more, smaller shards (write_shards per_shard=...)")
        self.data, self.augment, self.pre_augment, self.views = data, augment, pre_augment, views
        self.micro_batch, self.accum_steps, self.device = micro_batch, accum_steps, device
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batches_per_epoch = data.per_rank_samples(world_size) // micro_batch
        if self.batches_per_epoch == 0:
            raise ConfigError(f"each process is sure of only {data.per_rank_samples(world_size)} samples per epoch, "
                              f"fewer than one batch ({micro_batch}); lower train.batch_size or use more shards")
        self.log = log if world_size == 1 else (lambda text: log(f"[rank {rank}] {text}"))
        self.skipped = 0  # unreadable images met so far (each replaced in its batch)
        self._next_report = 1
        self._orders: dict[int, np.ndarray] = {}
        self._orders_lock = threading.Lock()
        self._pending: dict[int, list[Future]] = {}
        # Decoded pixels (or, with data.decode=device, the JPEG bytes) come back through shared memory, one slot
        # per micro-batch in flight (the current one and PREFETCH ahead); made before the pool forks its workers,
        # so they inherit the slots.
        shared = data.num_workers > 0 and SHARED_SLOTS
        self._row_shape = (device_decode.PAYLOAD_ROOM,) if data.decode_on_device else \
            (data.channels, data.decode_size, data.decode_size)
        self._slots = SharedSlots(PREFETCH + 1, micro_batch * int(np.prod(self._row_shape))) if shared else None
        self._pool = start_pool(data.num_workers, launch=True)  # forked now, from this thread, with the slots
        self._finalizer = weakref.finalize(self, stop_pool, self._pool, [self._slots] if shared else []) \
            if self._pool is not None else None
        # data.decode=device decodes in this process, and building a batch on a GPU waits for the queued training
        # step (host-to-device index copies, nvjpeg): one thread decodes the next micro-batch meanwhile, so only it
        # waits. It alone touches the worker queue (_pending).
        self._ahead = ThreadPoolExecutor(1, "mimkit-decode", *_on_device(device)) if data.decode_on_device else None
        self._ahead_job: tuple[int, Future] | None = None

    @property
    def images_per_epoch(self) -> int:
        return self.batches_per_epoch * self.micro_batch * self.world_size

    def epoch_of(self, step: int) -> int:
        return (step * self.accum_steps) // self.batches_per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's sample positions (in the ShardSet) for `epoch`, in training order. (The decode thread asks
        too: one at a time.)"""
        with self._orders_lock:
            return self._epoch_order(epoch)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            while len(self._orders) >= 2:  # the current epoch and the next (prefetching across the boundary)
                self._orders.pop(min(self._orders))
            d = self.data
            shards = torch.randperm(len(d.shards), generator=_generator(self.seed, epoch, "shards")).numpy()
            mine = shards[self.rank::self.world_size]
            stream = np.concatenate([np.arange(d.starts[s], d.starts[s] + d.counts[s]) for s in mine])
            buffer_rng = _generator(self.seed, epoch, "buffer", self.rank, self.world_size)
            length = self.batches_per_epoch * self.micro_batch
            self._orders[epoch] = stream[shuffle_buffer_order(len(stream), d.shuffle_buffer, buffer_rng, length)]
        return self._orders[epoch]

    def positions(self, index: int) -> np.ndarray:
        """The samples of micro-batch `index` (= step * accum_steps + micro)."""
        epoch, offset = divmod(index, self.batches_per_epoch)
        return self.epoch_order(epoch)[offset * self.micro_batch:(offset + 1) * self.micro_batch]

    def _submit(self, index: int) -> list[Future]:
        members = self.data.members(self.positions(index))
        size, channels = self.data.decode_size, self.data.channels
        parts = split_evenly(len(members), self.data.num_workers)
        if self._slots is not None:
            into = read_members_into if self.data.decode_on_device else decode_members_into
            return [self._pool.submit(into, members[i:j], size, channels, self._slots.key(index), i)
                    for i, j in parts]
        return [self._pool.submit(self._work, members[i:j], size, channels) for i, j in parts]

    @property
    def _work(self) -> Callable:
        """What is done with a chunk of members: decode it, or read it for the device (data.decode)."""
        return read_members if self.data.decode_on_device else decode_members

    def _decoded(self, index: int) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
        """Micro-batch `index` decoded (uint8 on the host, or on the device with data.decode=device, where the
        decode thread then starts on the next one), and the next PREFETCH ones queued in the workers."""
        if self._ahead is None:
            return self._decode_now(index)
        job = self._ahead_job
        if job is None or job[0] != index:  # the first batch, or a jump (resume)
            if job is not None:
                job[1].exception()  # let it finish: it uses the worker queue and a shared slot
            job = (index, self._ahead.submit(self._decode_now, index))
        result = job[1].result()
        self._ahead_job = (index + 1, self._ahead.submit(self._decode_now, index + 1))
        return result

    def _decode_now(self, index: int) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
        d, parts = self.data, self._read(index)
        shared = self._slots is not None  # (only made for a worker pool)
        if not d.decode_on_device:
            if not shared:
                return _join(parts)
            readable = np.concatenate(parts)
            return self._slots.array(index, self._row_shape)[:len(readable)], readable
        batch = device_decode.join(parts)
        if shared:
            batch.take_spans(self._slots.buffer(index))
        return device_decode.decode_batch(batch, d.decode_size, d.channels, self.device)

    def _read(self, index: int) -> list[Any]:
        """The workers' parts of micro-batch `index` (decoded, or read for the device), prefetching behind it."""
        if self._pool is None:
            return [self._work(self.data.members(self.positions(index)), self.data.decode_size, self.data.channels)]
        current = self._pending.pop(index, None)
        for stale in [k for k in self._pending if not index < k <= index + PREFETCH]:
            _drop(self._pending.pop(stale))  # (a jump: resume) before its slot is handed out again
        current = current or self._submit(index)
        for ahead in range(index + 1, index + 1 + PREFETCH):
            if ahead not in self._pending:
                self._pending[ahead] = self._submit(ahead)
        return [future.result() for future in current]

    def _stand_ins(self, readable: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Row i of the batch takes decoded row take[i]: an unreadable image is replaced by the readable images of
        its own micro-batch in turn, so the batch keeps its size and no other batch moves (determinism)."""
        take = np.arange(len(readable))
        bad = np.flatnonzero(~readable)
        if len(bad) == 0:
            return take
        good = np.flatnonzero(readable)
        example = _member_name(*self.data.members(positions[bad[:1]])[0][:2])
        if len(good) == 0:
            raise ShardError(f"no image of a whole batch of {len(readable)} could be decoded (e.g. {example}): "
                             "are the shards damaged?")
        take[bad] = good[np.arange(len(bad)) % len(good)]
        self.skipped += len(bad)
        if self.skipped >= self._next_report:  # 1, 2, 4, 8, ... : a damaged data set does not flood the log
            self.log(f"[data] warning: {self.skipped} unreadable image(s) skipped so far, latest {example} (each "
                     "replaced by another image of its batch)")
            self._next_report = 2 * self.skipped
        return take

    def get(self, step: int, micro: int) -> dict[str, Any]:
        """The augmented micro-batch `micro` of optimizer step `step` for this process."""
        index = step * self.accum_steps + micro
        positions = self.positions(index)
        images, readable = self._decoded(index)
        take = self._stand_ins(readable, positions)
        positions = positions[take]
        if not torch.is_tensor(images):
            images = torch.from_numpy(images[take])  # a copy: the shared slot is reused
        elif not (take == np.arange(len(take))).all():  # (on a GPU, without waiting for the queued step)
            images = images[to_device(torch.from_numpy(take), images.device)]
        batch = augmented_batch(images, self.data.ids(positions),
                                index // self.batches_per_epoch, self.augment, self.device, self.pre_augment,
                                self.views)
        if self.data.labels is not None:
            batch["labels"] = to_device(self.data.labels[torch.from_numpy(positions)], self.device)
        return batch

    def close(self) -> None:
        """Stop the decode workers and RandAugment's (also done at exit and when the stream is garbage-collected)."""
        if self._ahead is not None:
            self._ahead.shutdown(wait=True, cancel_futures=True)  # before the queue it uses is cleared
            self._ahead_job = None
        for futures in self._pending.values():
            for future in futures:
                future.cancel()
        self._pending.clear()
        if self._finalizer is not None:  # stops the pool, then closes the shared slots (made only with a pool)
            self._finalizer()
        close = getattr(self.pre_augment, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "ShardStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _on_device(device: torch.device) -> tuple:
    """(initializer, initargs) making `device` the decode thread's current CUDA device (each DDP rank its own)."""
    return (torch.cuda.set_device, (device,)) if device.type == "cuda" else (None, ())


def _drop(futures: list[Future]) -> None:
    """Cancel queued work, then wait out work already running (it writes into a shared slot about to be reused)."""
    for future in [f for f in futures if not f.cancel()]:
        future.exception()


# ---------------------------------------------------------------------------------------------------- build_data
def _split_heldout(paths: list[Path], cfg: Any) -> tuple[list[Path], list[Path], str]:
    """(training shards, held-out shards, where the held-out set comes from): data.val_root's shards, else the
    last training shard."""
    d = cfg.data
    if d.val_root:
        return paths, shard_paths(d.val_root, "data.val_root"), f"val_root {d.val_root}"
    if len(paths) < 2:
        raise ShardError(f"data.root '{d.root}' has one shard: without data.val_root the last shard is held out, "
                         "which leaves nothing to train on; write more shards or set data.val_root")
    return paths[:-1], paths[-1:], f"last shard {paths[-1].name}"


def build_webdataset(cfg: Any, log: Callable = print) -> DataBundle:
    """Training shards as a ShardSet (streamed) and the held-out shards decoded into memory."""
    d = cfg.data
    train_paths, held_paths, source = _split_heldout(shard_paths(d.root), cfg)

    def shard_set(paths: list[Path], decode: str = "pil") -> ShardSet:
        return ShardSet(index_shards(paths, d.num_workers, log), d.decode_size, d.in_chans, d.num_workers,
                        d.shuffle_buffer, decode)

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
        raise ConfigError(f"{what} needs the whole training set in memory; data.name=webdataset streams it from "
                          "shards (use data.name=folder on the extracted images)")


# ---------------------------------------------------------------------------------------------------- writing
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


def write_shards(images: np.ndarray | Sequence[str | Path | bytes], labels: Sequence[int] | np.ndarray | None,
                 out_dir: str | Path, per_shard: int = 1000, prefix: str = "shard") -> list[Path]:
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


def write_shards_from(source: str, out_dir: str | Path, per_shard: int = 1000, split: str = "train",
                      prefix: str | None = None) -> list[Path]:
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


def write_synthetic_shards(out_dir: str | Path, count: int, width: int = 500, height: int = 375,
                           per_shard: int = 1000, distinct: int = 256, classes: int = 1000,
                           prefix: str = "synthetic") -> list[Path]:
    """`count` samples of `distinct` synthetic JPEGs (reused in turn: decoding costs the same) with seeded random
    labels: shards shaped like ImageNet's for `mimkit bench loader` on any machine."""
    if count < 1 or distinct < 1:
        raise ValueError(f"count ({count}) and distinct ({distinct}) must be >= 1")
    images = synthetic_jpegs(min(distinct, count), width, height)
    labels = np.random.default_rng(1).integers(0, classes, count)
    return write_shards([images[i % len(images)] for i in range(count)], labels, out_dir, per_shard, prefix)
