"""`data.name=webdataset`: training images streamed from WebDataset tar shards instead of decoded into memory.

A shard is a plain (uncompressed) .tar whose consecutive members form samples by key, the member name up to the
first dot of its basename: `000123.jpg` (or .jpeg/.png/.webp/.bmp) is the image, an optional `000123.cls` holds an
integer label, other members are ignored.

Each shard is indexed once by walking its tar headers (byte offset and size of each sample's image, its label),
cached per (path, size, mtime). With the index every batch is a pure function of (seed, epoch, rank, world size,
step): a resumed run jumps straight to its step and reads only the images it trains on. The semantics (shard
shuffling, per-rank dealing, shuffle buffer, epoch length, sample ids, unreadable images, held-out shards) are
described in docs/webdataset.md.

The package, by job: paths.py (shard lists), index.py (the tar index and its cache), decode.py (reading and
decoding images), shardset.py (ShardSet), stream.py (ShardStream), build.py (build_data for webdataset), write.py
(writing shards).
"""

from mimkit.data.webdataset.build import build_webdataset, require_in_memory
from mimkit.data.webdataset.decode import decode_many, read_payloads
from mimkit.data.webdataset.index import HELDOUT_ID_OFFSET, ID_STRIDE, ShardIndex, index_shards, load_index, scan_shard
from mimkit.data.webdataset.paths import ShardError, expand_braces, shard_paths
from mimkit.data.webdataset.shardset import ShardSet
from mimkit.data.webdataset.stream import ShardStream, shuffle_buffer_order
from mimkit.data.webdataset.write import synthetic_jpegs, write_shards, write_shards_from, write_synthetic_shards

__all__ = [
    "HELDOUT_ID_OFFSET",
    "ID_STRIDE",
    "ShardError",
    "ShardIndex",
    "ShardSet",
    "ShardStream",
    "build_webdataset",
    "decode_many",
    "expand_braces",
    "index_shards",
    "load_index",
    "read_payloads",
    "require_in_memory",
    "scan_shard",
    "shard_paths",
    "shuffle_buffer_order",
    "synthetic_jpegs",
    "write_shards",
    "write_shards_from",
    "write_synthetic_shards",
]
