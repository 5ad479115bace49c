"""`data.decode=device`: the JPEGs of a shard batch are decoded on the training device (nvjpeg on CUDA, batched)
and fitted to the decode size there, instead of by PIL in worker processes.

Why: PIL decoding of ImageNet-sized JPEGs on every core of a GPU node is slower than a ViT-B/16 MAE step (the
performance issue measured 4,225 img/s on 16 cores against nvjpeg's 19,855 on one H100). The workers then only
read bytes and sort out what the device decoder cannot take: anything that is not a plain JPEG, CMYK JPEGs and
JPEGs with an EXIF rotation go through the same PIL path as `data.decode=pil`, so every image ends up decoded,
and an unreadable one is skipped and counted as before.

The device path fits each image the way PIL's `ImageOps.fit` does on the host: the centred square of the
shorter side (on a half pixel when PIL's box is), resampled with Pillow's bicubic coefficients in Pillow's own
fixed-point integer arithmetic, so a CPU run gives the host path's pixels (see fit_square for the one exception).
Images of the same shape are resized together.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from mimkit.data import folder

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
EXIF_ORIENTATION = 0x0112
DEVICE_MODES = ("L", "RGB")  # what a JPEG decodes to on the device (a YCbCr JPEG opens as RGB in PIL)
PAYLOAD_ROOM = 256 * 1024  # shared-memory bytes per image for JPEGs read by workers (ImageNet's average is ~110 KB)
RESIZE_PIXELS = 1 << 26  # values resized in one call: bounds the int32 copies of large originals (256 MB)
FIXED_POINT = 1 << 22  # Pillow's PRECISION_BITS for 8-bit images (32 - 8 - 2)


@dataclass
class ReadBatch:
    """One micro-batch (or a worker's part of it) as read from the shards: the JPEGs the device will decode, the
    images PIL already decoded on the host, and which images are unreadable."""

    payloads: list[bytes | memoryview | None]  # JPEG bytes for the device; None where `host` or `spans` hold it,
    # or it is unreadable
    host: dict[int, np.ndarray] = field(default_factory=dict)  # row -> (C, S, S) uint8 decoded by PIL
    readable: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # row -> (offset, length) in a shared slot

    def __len__(self) -> int:
        return len(self.payloads)

    def take_spans(self, buffer: memoryview) -> None:
        """Point the rows a worker left in shared memory at their bytes in `buffer` (no copy: decode them before
        the slot is reused)."""
        for row, (offset, length) in self.spans.items():
            self.payloads[row] = buffer[offset : offset + length]
        self.spans = {}


def device_decodable(payload: bytes) -> bool:
    """A whole (ends with the EOI marker) plain L/RGB JPEG without EXIF rotation. Only the header is parsed (PIL
    opens lazily). A truncated JPEG goes to PIL, which decides whether it is readable, as with data.decode=pil:
    nvjpeg might decode part of it without an error."""
    if not payload.startswith(JPEG_MAGIC) or not payload.rstrip(b"\x00").endswith(JPEG_END):
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(payload)) as img:
            return img.mode in DEVICE_MODES and img.getexif().get(EXIF_ORIENTATION, 1) == 1
    except Exception:  # noqa: BLE001 - a header PIL cannot parse: the host path decides whether it is readable
        return False


def decode_on_host(payload: bytes, size: int, channels: int) -> np.ndarray | None:
    """(C, S, S) uint8 by the host path (`data.decode=pil`), None when unreadable."""
    array = folder.decode_image(io.BytesIO(payload), size, "L" if channels == 1 else "RGB")
    return None if array is None else array.transpose(2, 0, 1)


def sort_payloads(payloads: Sequence[bytes], size: int, channels: int) -> ReadBatch:
    """Keep plain JPEGs for the device and decode the rest here with PIL. Runs in the decode workers (numpy and
    PIL only)."""
    batch = ReadBatch([None] * len(payloads), {}, np.zeros(len(payloads), dtype=bool))
    for row, payload in enumerate(payloads):
        if device_decodable(payload):
            batch.payloads[row], batch.readable[row] = payload, True
            continue
        array = decode_on_host(payload, size, channels)
        if array is not None:
            batch.host[row], batch.readable[row] = array, True
    return batch


def join(parts: Sequence[ReadBatch]) -> ReadBatch:
    """The workers' parts of one micro-batch, in order."""
    out = ReadBatch([], {}, np.concatenate([p.readable for p in parts]) if parts else np.zeros(0, dtype=bool))
    for part in parts:
        out.host.update({len(out.payloads) + row: array for row, array in part.host.items()})
        out.spans.update({len(out.payloads) + row: span for row, span in part.spans.items()})
        out.payloads.extend(part.payloads)
    return out


def decode_jpegs(payloads: Sequence[bytes | memoryview], device: torch.device) -> list[torch.Tensor | None]:
    """(3, H, W) uint8 RGB images on `device` (a gray JPEG comes out replicated, as PIL's convert("RGB") gives it),
    one batched call (nvjpeg on CUDA); when the batch fails, image by image, with None for those the decoder
    rejects."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.RGB
    data = [torch.frombuffer(p if isinstance(p, memoryview) else bytearray(p), dtype=torch.uint8) for p in payloads]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision >= 0.29 points to TorchCodec
        try:
            return list(decode_jpeg(data, mode=mode, device=device)) if data else []
        except torch.cuda.OutOfMemoryError:
            raise  # not a bad image: falling back would hide it
        except RuntimeError:
            pass
        decoded: list[torch.Tensor | None] = []
        for one in data:
            try:
                decoded.append(decode_jpeg(one, mode=mode, device=device))
            except torch.cuda.OutOfMemoryError:
                raise
            except RuntimeError:
                decoded.append(None)
        return decoded


def pil_luma(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> (..., 1, H, W): PIL's convert("L") (ITU-R 601-2 in 16-bit fixed point), so gray
    training images match the host path exactly."""
    r, g, b = rgb.to(torch.int32).unbind(-3)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(-3)


def _bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic kernel (a = -0.5)."""
    a, x = -0.5, np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


@functools.lru_cache(maxsize=1024)
def _pil_taps(in_size: int, start: float, stop: float, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first (out_size,) int64, taps (out_size, K) float64): output pixel o is the sum over t of
    taps[o, t] * input[first[o] + t]. These are the bicubic coefficients Pillow's resampler uses for the source
    interval [start, stop) (Resample.c, precompute_coeffs), in its 22-bit fixed point (normalize_coeffs_8bpc).
    Unused taps are zero and point at a valid pixel."""
    scale = (stop - start) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    window = int(np.ceil(support)) * 2 + 1
    first = np.zeros(out_size, dtype=np.int64)
    taps = np.zeros((out_size, window))
    for out in range(out_size):
        center = start + (out + 0.5) * scale
        lo, hi = max(0, int(center - support + 0.5)), min(in_size, int(center + support + 0.5))
        w = _bicubic((np.arange(lo, hi) - center + 0.5) * (1.0 / filterscale))
        total = 0.0
        for value in w:  # in Pillow's order: a pairwise sum could round differently
            total += value
        first[out] = min(lo, in_size - window) if in_size >= window else 0
        taps[out, lo - first[out] : hi - first[out]] = w / total if total != 0.0 else w
    return first, np.sign(taps) * np.floor(np.abs(taps) * FIXED_POINT + 0.5) / FIXED_POINT


def _resample(x: torch.Tensor, in_size: int, start: float, stop: float, out_size: int) -> torch.Tensor:
    """One pass of Pillow's 8-bit resampler along the first axis of int32 pixels, in Pillow's own integer
    arithmetic (exact: 8-bit pixels times 22-bit coefficients fit int32): a few taps per output, each a gather of
    whole rows, then rounded half up and clipped to 0..255 as Pillow's clip8 does."""
    first, taps = _pil_taps(in_size, start, stop, out_size)
    index = torch.from_numpy(first[:, None] + np.arange(taps.shape[1])).clamp_(max=in_size - 1).to(x.device)
    weights = torch.from_numpy(np.round(taps * FIXED_POINT).astype(np.int32)).to(x.device)
    weights = weights.view(out_size, -1, *([1] * (x.dim() - 1)))
    out = torch.full((out_size, *x.shape[1:]), FIXED_POINT // 2, dtype=torch.int32, device=x.device)
    for t in range(taps.shape[1]):
        out += x.index_select(0, index[:, t]).mul_(weights[:, t])
    return out.bitwise_right_shift_(FIXED_POINT.bit_length() - 1).clamp_(0, 255)


def fit_square(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """uint8 (n, C, size, size): PIL's `ImageOps.fit(image, (size, size), BICUBIC)` (the host path) for each
    (C, H, W) uint8 image, on the images' device. The centred square of side min(H, W) (a fractional box when
    H - W is odd, as PIL keeps it) is resampled horizontally, then vertically, with Pillow's coefficients and
    rounding. That is Pillow's order; Pillow 13 runs the vertical pass first when the height shrinks much more
    than the width, which moves the intermediate rounding: then pixels may differ by a level or two. Images of
    one shape are resized together."""
    first = images[0]
    out = torch.empty((len(images), first.shape[0], size, size), dtype=torch.uint8, device=first.device)
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row, image in enumerate(images):
        by_shape[tuple(image.shape[-2:])].append(row)
    for (height, width), rows in by_shape.items():
        side = min(height, width)
        left, top = (width - side) * 0.5, (height - side) * 0.5
        per_call = max(1, RESIZE_PIXELS // (first.shape[0] * height * width))
        for start in range(0, len(rows), per_call):
            chunk = rows[start : start + per_call]
            x = torch.stack([images[r] for r in chunk]).permute(3, 0, 1, 2).to(torch.int32).contiguous()  # W,n,C,H
            x = _resample(x, width, left, left + side, size).permute(3, 1, 2, 0).contiguous()  # (H, n, C, size)
            x = _resample(x, height, top, top + side, size)  # (size rows, n, C, size columns)
            out[torch.tensor(chunk, device=out.device)] = x.permute(1, 2, 0, 3).to(torch.uint8)
    return out


def decode_batch(batch: ReadBatch, size: int, channels: int, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """(uint8 (n, C, size, size) on `device`, readable (n,) bool): the device decodes the JPEGs, a JPEG it rejects
    falls back to PIL here, and the host-decoded images are copied in. Unreadable rows are zeros."""
    from mimkit.data.loader import to_device

    readable = batch.readable.copy()
    images = torch.zeros((len(batch), channels, size, size), dtype=torch.uint8, device=device)
    host = dict(batch.host)
    rows = [row for row, payload in enumerate(batch.payloads) if payload is not None]
    decoded = decode_jpegs([batch.payloads[row] for row in rows], device)
    on_device = [(row, image) for row, image in zip(rows, decoded) if image is not None]
    for row, image in zip(rows, decoded):
        if image is None:  # e.g. a JPEG flavour nvjpeg does not take: the host path, as data.decode=pil would
            array = decode_on_host(batch.payloads[row], size, channels)
            if array is None:
                readable[row] = False
            else:
                host[row] = array
    if on_device:
        pixels = [pil_luma(image) if channels == 1 else image for _, image in on_device]  # PIL converts, then fits
        images[torch.tensor([row for row, _ in on_device], device=device)] = fit_square(pixels, size)
    if host:
        order = sorted(host)
        images[torch.tensor(order, device=device)] = to_device(
            torch.from_numpy(np.stack([host[r] for r in order])), device
        )
    return images, readable
