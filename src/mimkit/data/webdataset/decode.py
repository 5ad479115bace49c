"""Decoding shard images: the stored bytes read by offset, decoded with PIL (in this process, into shared-memory
slots for the worker pool) or read raw for decoding on the device."""

from __future__ import annotations

import tarfile
from typing import Any, Sequence

import numpy as np

from mimkit.data import device_decode
from mimkit.data.webdataset.paths import ShardError
from mimkit.data.workers import slot_array, split_evenly, start_pool, stop_pool

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
                    raise ShardError(
                        f"shard '{path}' cannot be read any more ({err.strerror}); was it moved or "
                        "deleted during the run?"
                    ) from None
            handles[path].seek(offset)
            payloads.append(handles[path].read(length))
    finally:
        for handle in handles.values():
            handle.close()
    return payloads


def decode_members(
    members: Sequence[Member], size: int, channels: int, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
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
    rows = slot_array(slot, (channels, size, size))[row : row + len(members)]
    return decode_members(members, size, channels, out=rows)[1]


def read_members(members: Sequence[Member], size: int, channels: int) -> device_decode.ReadBatch:
    """`data.decode=device`: the JPEGs' bytes for the device, everything else decoded here by PIL."""
    return device_decode.sort_payloads(read_payloads(members), size, channels)


def read_members_into(
    members: Sequence[Member], size: int, channels: int, slot: int, row: int
) -> device_decode.ReadBatch:
    """read_members in a worker, with the JPEG bytes written into rows row.. of shared slot `slot` (rows of
    PAYLOAD_ROOM bytes, shared by the chunk: a large JPEG may use a small one's room) and sent back as spans; a
    JPEG that does not fit goes through the pipe."""
    batch = read_members(members, size, channels)
    arena = slot_array(slot, (device_decode.PAYLOAD_ROOM,)).reshape(-1)
    cursor, end = row * device_decode.PAYLOAD_ROOM, (row + len(members)) * device_decode.PAYLOAD_ROOM
    for i, payload in enumerate(batch.payloads):
        if payload is not None and cursor + len(payload) <= end:
            arena[cursor : cursor + len(payload)] = np.frombuffer(payload, dtype=np.uint8)
            batch.spans[i], batch.payloads[i] = (cursor, len(payload)), None
            cursor += len(payload)
    return batch


def _chunks(members: Sequence[Member], parts: int) -> list[Sequence[Member]]:
    return [members[i:j] for i, j in split_evenly(len(members), parts)]


def join_parts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def decode_many(members: Sequence[Member], size: int, channels: int, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """decode_members over a temporary pool of `workers` processes (held-out shards, fixed train subsets)."""
    if workers <= 0 or len(members) < 2 * workers:
        return decode_members(members, size, channels)
    pool = start_pool(workers)
    try:
        futures = [pool.submit(decode_members, chunk, size, channels) for chunk in _chunks(members, 4 * workers)]
        return join_parts([f.result() for f in futures])
    finally:
        stop_pool(pool)


def member_name(path: str, offset: int) -> str:
    """The tar name of the member whose data starts at `offset` (its header is the 512 bytes before), for
    messages; long names may come back shortened."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset - tarfile.BLOCKSIZE)
            return f"{path}:{tarfile.TarInfo.frombuf(fh.read(tarfile.BLOCKSIZE), 'utf-8', 'replace').name}"
    except (OSError, tarfile.TarError, ValueError):
        return f"{path}@{offset}"
