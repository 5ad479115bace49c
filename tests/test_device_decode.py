"""data.decode=device: shard JPEGs decoded by torchvision on the training device and fitted there the way PIL fits
them on the host (data.decode=pil). On CPU torchvision decodes with libjpeg-turbo, as PIL does, so the two paths
can be compared pixel for pixel; the GPU-marked test compares nvjpeg against them."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.cli import main
from mimkit.config import ConfigError, load_config, resolved
from mimkit.data import device_decode
from mimkit.data.transforms import BatchAugment
from mimkit.data.webdataset import ShardSet, ShardStream, load_index, synthetic_jpegs, write_shards

CPU = torch.device("cpu")
SIZE = 24  # decode size


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))


def _encode(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **save) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _rotated_jpeg() -> bytes:
    """A JPEG whose EXIF says 'rotate 90': PIL's path turns it upright, so it must not go to the device."""
    exif = Image.Exif()
    exif[device_decode.EXIF_ORIENTATION] = 6
    return _encode(np.asarray(Image.open(io.BytesIO(synthetic_jpegs(1, 40, 30, seed=3)[0]))), exif=exif.tobytes())


def _data(tmp_path: Path, payloads: list[bytes], channels: int = 3, decode: str = "pil", workers: int = 0) -> ShardSet:
    """The payloads as one shard (written afresh for each call)."""
    out = tmp_path / f"shards-{len(list(tmp_path.glob('shards-*')))}"
    [path] = write_shards(payloads, np.arange(len(payloads)) % 3, out, per_shard=len(payloads))
    return ShardSet([load_index(path)[0]], SIZE, channels, workers, 4, decode)


def _stream(data: ShardSet, micro: int) -> ShardStream:
    augment = BatchAugment(16, (0.3, 1.0), (3 / 4, 4 / 3), True, [0.5] * data.channels, [0.25] * data.channels, 0)
    return ShardStream(data, augment, micro, 1, 0, 1, 0, CPU, log=lambda *_: None)


def _decoded(data: ShardSet, micro: int) -> tuple[torch.Tensor, np.ndarray]:
    with _stream(data, micro) as stream:
        images, readable = stream._decoded(0)
        order = stream.positions(0)
    images = images if torch.is_tensor(images) else torch.from_numpy(images)
    return images[np.argsort(order)], readable[np.argsort(order)]  # rows in shard order


# Landscape and square shapes: Pillow resamples these horizontally first in every version, like fit_square.
EXACT_SHAPES = [(75, 50), (64, 64), (81, 40), (30, 20), (120, 90)]


@pytest.mark.parametrize("channels", [3, 1])
def test_device_path_gives_the_pil_paths_pixels(tmp_path, channels):
    payloads = [synthetic_jpegs(1, w, h, seed=w)[0] for w, h in EXACT_SHAPES]
    payloads.append(_encode(np.asarray(Image.open(io.BytesIO(payloads[0]))), mode="L"))  # a gray JPEG
    host, host_ok = _decoded(_data(tmp_path, payloads, channels), len(payloads))
    device, device_ok = _decoded(_data(tmp_path, payloads, channels, "device"), len(payloads))
    assert host_ok.all() and device_ok.all()
    assert device.dtype == torch.uint8 and device.shape == (len(payloads), channels, SIZE, SIZE)
    assert torch.equal(device, host)


def test_portrait_images_are_within_a_level_or_two_of_pil(tmp_path):
    """Pillow 13 resamples images whose height shrinks much more than their width vertically first; the
    intermediate rounding then differs from fit_square's horizontal-first order at a few pixels."""
    payloads = [synthetic_jpegs(1, w, h, seed=h)[0] for w, h in [(50, 75), (40, 90), (60, 61)]]
    host, _ = _decoded(_data(tmp_path, payloads), 3)
    device, _ = _decoded(_data(tmp_path, payloads, decode="device"), 3)
    diff = (host.int() - device.int()).abs().float()
    assert diff.mean() < 0.5 and diff.max() <= 2


def test_fit_square_keeps_the_fractional_centre_box_of_pil():
    """An odd difference between width and height puts PIL's crop box on a half pixel: 45x30 -> box x 7.5..37.5."""
    array = np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    from PIL import ImageOps

    expected = np.asarray(ImageOps.fit(Image.fromarray(array), (SIZE, SIZE), method=Image.Resampling.BICUBIC))
    fitted = device_decode.fit_square([torch.from_numpy(array.transpose(2, 0, 1).copy())], SIZE)[0]
    assert torch.equal(fitted, torch.from_numpy(expected.transpose(2, 0, 1).copy()))
    whole_pixels = torch.nn.functional.interpolate(
        torch.from_numpy(array[:, 7:37].transpose(2, 0, 1).copy())[None].float(),
        size=(SIZE, SIZE),
        mode="bicubic",
        antialias=True,
    )
    assert (whole_pixels[0].round() - fitted.float()).abs().max() > 2  # a whole-pixel crop would not match


def test_fit_square_resizes_mixed_shapes_in_groups_in_the_right_rows():
    rng = np.random.default_rng(1)
    images = [
        torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
        for h, w in [(30, 40), (20, 20), (30, 40), (50, 35), (20, 20), (30, 40)]
    ]
    together = device_decode.fit_square(images, 16)
    alone = torch.cat([device_decode.fit_square([image], 16) for image in images])
    assert torch.equal(together, alone)


def test_what_the_device_cannot_take_is_decoded_by_pil_exactly(tmp_path):
    base = np.asarray(Image.open(io.BytesIO(synthetic_jpegs(1, 40, 30, seed=5)[0])))
    odd = {"png": _encode(base, "PNG"), "cmyk": _encode(base, mode="CMYK"), "rotated": _rotated_jpeg()}
    sorted_batch = device_decode.sort_payloads([*odd.values(), synthetic_jpegs(1, 40, 30)[0]], SIZE, 3)
    assert sorted_batch.payloads[:3] == [None, None, None] and sorted_batch.payloads[3] is not None
    assert sorted(sorted_batch.host) == [0, 1, 2] and sorted_batch.readable.all()
    payloads = list(odd.values())
    host, _ = _decoded(_data(tmp_path, payloads), 3)
    device, _ = _decoded(_data(tmp_path, payloads, decode="device"), 3)
    assert torch.equal(device, host)  # the rotated JPEG came out upright, as PIL's exif_transpose turns it


def _bogus_huffman_table(jpeg: bytes) -> bytes:
    """A whole JPEG whose first Huffman table counts are impossible: its header parses, the decoders fail."""
    data = bytearray(jpeg)
    table = data.find(b"\xff\xc4")
    data[table + 5 : table + 21] = b"\xff" * 16
    return bytes(data)


def test_a_corrupt_jpeg_is_skipped_and_counted_like_the_pil_path(tmp_path):
    """The corrupt JPEG reaches the device decoder (batched call fails, then that image alone), falls back to PIL,
    which fails too: skipped and counted, its slot filled by a batch-mate, as on the PIL path. A truncated JPEG
    (no end marker) never goes to the device: PIL decides, as it does with data.decode=pil."""
    good = synthetic_jpegs(5, 40, 30)
    corrupt, truncated = _bogus_huffman_table(good[0]), good[4][: len(good[4]) * 2 // 3]
    assert device_decode.device_decodable(corrupt) and not device_decode.device_decodable(truncated)
    assert device_decode.decode_jpegs([good[1], corrupt], CPU)[1] is None
    payloads = [good[1], corrupt, good[2], truncated, good[3]]
    batches = {}
    for decode in ("pil", "device"):
        with _stream(_data(tmp_path, payloads, decode=decode), 5) as stream:
            batches[decode] = stream.get(0, 0)
            assert stream.skipped == 2
    assert torch.equal(batches["pil"]["ids"], batches["device"]["ids"])  # the same stand-ins fill the slots
    assert batches["device"]["images"].shape == (5, 3, 16, 16)
    assert torch.allclose(batches["pil"]["images"], batches["device"]["images"])


def test_workers_read_for_the_device_and_the_batch_is_the_same(tmp_path):
    """Worker parts are joined in order, host-decoded rows (a PNG in the second part) keep their place."""
    jpegs = synthetic_jpegs(5, 40, 30)
    png = _encode(np.asarray(Image.open(io.BytesIO(jpegs[0]))), "PNG")
    payloads = [*jpegs[:4], png, jpegs[4]]
    alone, _ = _decoded(_data(tmp_path, payloads, decode="device"), 6)
    pooled, _ = _decoded(_data(tmp_path, payloads, decode="device", workers=2), 6)
    assert torch.equal(alone, pooled)
    joined = device_decode.join(
        [device_decode.sort_payloads(payloads[:3], SIZE, 3), device_decode.sort_payloads(payloads[3:], SIZE, 3)]
    )
    assert sorted(joined.host) == [4] and len(joined) == 6


def test_worker_jpegs_come_back_through_shared_memory_and_an_oversize_one_through_the_pipe(tmp_path, monkeypatch):
    small = synthetic_jpegs(6, 40, 30)
    large = synthetic_jpegs(1, 160, 120, seed=9)[0]
    monkeypatch.setattr(device_decode, "PAYLOAD_ROOM", max(map(len, small)))  # forked workers inherit it
    assert len(large) > 4 * device_decode.PAYLOAD_ROOM  # more than a whole worker's share of the slot
    payloads = [*small[:3], large, *small[3:]]
    expected, _ = _decoded(_data(tmp_path, payloads, decode="device"), 7)
    data = _data(tmp_path, payloads, decode="device", workers=2)
    with _stream(data, 7) as stream:
        parts = [future.result() for future in stream._submit(0)]
        assert sum(len(part.spans) for part in parts) == 6
        assert [len(p) for part in parts for p in part.payloads if p is not None] == [len(large)]
    assert torch.equal(_decoded(data, 7)[0], expected)


def test_the_decode_thread_works_a_batch_ahead_and_jumps_get_the_right_batch(tmp_path, monkeypatch):
    payloads = synthetic_jpegs(12, 40, 30)
    pooled, alone = _data(tmp_path, payloads, decode="device", workers=1), _data(tmp_path, payloads, decode="device")
    with _stream(pooled, 3) as stream:
        for step in (0, 1, 5, 2, 3):  # 4 micro-batches per epoch: 5 is in the second
            got = stream.get(step, 0)
            with _stream(alone, 3) as fresh:
                want = fresh.get(step, 0)
            assert torch.equal(got["ids"], want["ids"]) and torch.equal(got["images"], want["images"]), step
        stream._ahead_job[1].result()  # step 4 was decoded by the thread while the caller went on
        monkeypatch.setattr(stream, "_decode_now", lambda index: pytest.fail("decoded again on demand"))
        assert stream.get(4, 0)["images"].shape == (3, 3, 16, 16)
    assert stream._ahead_job is None and stream._ahead._shutdown


@pytest.mark.parametrize(
    "extra, message",
    [
        (["data.decode=device"], "data.decode=device decodes streamed shards"),
        (["data.decode=gpu"], "data.decode: 'gpu' is not one of pil, device"),
        (
            [
                "data.name=webdataset",
                "data.root=/x",
                "data.decode=device",
                "method.name=supervised",
                "method.randaug=rand-m9-mstd0.5",
            ],
            "RandAugment runs on host images",
        ),
    ],
)
def test_config_errors(extra, message):
    with pytest.raises(ConfigError, match=message):
        resolved(load_config("mae_fmnist_tiny", extra))


def test_shards_cli_writes_synthetic_jpeg_shards(tmp_path, capsys):
    out = tmp_path / "syn"
    assert (
        main(
            [
                "shards",
                "--data",
                "synthetic",
                "--count",
                "12",
                "--per-shard",
                "5",
                "--image-size",
                "40x30",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "synthetic-{000000..000002}.tar" in capsys.readouterr().out
    with tarfile.open(out / "synthetic-000000.tar") as tar:
        names = tar.getnames()
        image = Image.open(tar.extractfile(names[0]))
        assert names[:2] == ["000000.jpg", "000000.cls"] and image.format == "JPEG" and image.size == (40, 30)
    assert main(["shards", "--data", "synthetic", "--image-size", "40by30", "--out", str(out)]) == 2
    assert main(["shards", "--data", "synthetic", "--per-shard", "0", "--out", str(out)]) == 2


@pytest.mark.gpu
def test_nvjpeg_decodes_close_to_libjpeg_and_stays_on_the_gpu(tmp_path):
    assert device_decode.decode_jpegs([_bogus_huffman_table(synthetic_jpegs(1, 40, 30)[0])], torch.device("cuda")) == [
        None
    ]  # nvjpeg rejects it too
    payloads = [synthetic_jpegs(1, w, h, seed=w)[0] for w, h in [*EXACT_SHAPES, (50, 75)]]
    host, _ = _decoded(_data(tmp_path, payloads), len(payloads))
    sorted_batch = device_decode.sort_payloads(payloads, SIZE, 3)
    gpu, readable = device_decode.decode_batch(sorted_batch, SIZE, 3, torch.device("cuda"))
    assert gpu.is_cuda and readable.all()
    diff = (gpu.cpu().int() - host.int()).abs().float()  # nvjpeg's IDCT and upsampling differ slightly
    assert diff.mean() < 1.5, diff.mean()
