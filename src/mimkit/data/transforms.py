"""Batched augmentation on uint8 tensors, on whatever device they live on (CPU today, GPU for speed).

RandomResizedCrop + horizontal flip + normalisation for a whole batch at once: crop boxes are drawn per sample from
keyed random numbers (torchvision's sampling rule: 10 tries of area and log-aspect, then a centre-crop fallback) and
resampled with `roi_align`, which crops and bilinearly resizes every box of a batch in one call.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np
import torch
from torchvision.ops import roi_align

from mimkit.data.keyed_random import STREAM_CROP, STREAM_FLIP, keyed_uniform

ATTEMPTS = 10


def _normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-channel statistics; frames stacked on the channel axis (tracking's pairs) repeat them per frame."""
    frames = x.shape[1] // mean.numel()
    return (x / 255.0 - mean.repeat(frames).view(1, -1, 1, 1)) / std.repeat(frames).view(1, -1, 1, 1)


class BatchAugment:
    """uint8 (B, C, S, S) + sample keys -> normalised float (B, C, out, out)."""

    def __init__(
        self,
        out_size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        hflip: bool,
        mean: list[float],
        std: list[float],
        seed: int,
    ):
        self.out_size = out_size
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.ratio = ratio
        self.hflip = hflip
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.seed = seed

    def crop_boxes(self, keys: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, 4) float boxes x1, y1, x2, y2 in pixel coordinates."""
        u = keyed_uniform(keys, 4 * ATTEMPTS, self.seed, STREAM_CROP).view(-1, ATTEMPTS, 4)
        area = height * width * (self.scale[0] + u[..., 0] * (self.scale[1] - self.scale[0]))
        aspect = torch.exp(self.log_ratio[0] + u[..., 1] * (self.log_ratio[1] - self.log_ratio[0]))
        w = torch.round(torch.sqrt(area * aspect))
        h = torch.round(torch.sqrt(area / aspect))
        valid = (w > 0) & (h > 0) & (w <= width) & (h <= height)
        top = torch.floor(u[..., 2] * (height - h + 1))
        left = torch.floor(u[..., 3] * (width - w + 1))
        first = torch.argmax(valid.to(torch.int8), dim=1)  # first valid attempt (0 when none)
        pick = lambda t: t.gather(1, first[:, None]).squeeze(1)  # noqa: E731
        w, h, top, left = pick(w), pick(h), pick(top), pick(left)
        # Fallback (no valid attempt): the largest centred crop with an aspect ratio inside the allowed range.
        any_valid = valid.any(dim=1)
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(height * self.ratio[1]), height
        else:
            fw, fh = width, height
        w = torch.where(any_valid, w, torch.full_like(w, fw))
        h = torch.where(any_valid, h, torch.full_like(h, fh))
        top = torch.where(any_valid, top, torch.full_like(top, (height - fh) // 2))
        left = torch.where(any_valid, left, torch.full_like(left, (width - fw) // 2))
        return torch.stack([left, top, left + w, top + h], dim=1)

    def __call__(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        b, c, height, width = images.shape
        keys = keys.to(images.device)
        boxes = self.crop_boxes(keys, height, width).to(images.device)
        rois = torch.cat([torch.arange(b, device=images.device, dtype=torch.float32)[:, None], boxes], dim=1)
        x = roi_align(
            images.float(), rois, output_size=self.out_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True
        )
        if self.hflip:
            flip = keyed_uniform(keys, 1, self.seed, STREAM_FLIP).squeeze(1) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return _normalize(x.clamp(0, 255), self.mean.to(x.device), self.std.to(x.device))


def eval_transform(images: torch.Tensor, out_size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """The whole image, resized to the network size and normalised (held-out evaluation, figures)."""
    x = images.float()
    if x.shape[-1] != out_size or x.shape[-2] != out_size:
        x = torch.nn.functional.interpolate(
            x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True
        )
    m = torch.tensor(mean, device=x.device)
    s = torch.tensor(std, device=x.device)
    return _normalize(x.clamp(0, 255), m, s)


def denormalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Normalised -> [0, 1] for figures."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1)


class RandAugmentBatch:
    """timm's RandAugment (PIL, per image) on a uint8 batch on the CPU, before the batched crop. Each image's ops
    and magnitudes are drawn from Python's and numpy's RNGs seeded by its sample key, so the result is reproducible
    and the same whether it runs here or, with `workers` > 0, split over that many persistent processes (fine-tuning
    at 224 px needs them: one core does a few hundred images a second). `submit` starts a batch in the workers and
    returns a handle for `collect`, so the stream can prepare the next batch while this one trains. The pixels go
    to the workers and come back through two shared-memory slots (Linux), not through the pool's pipes."""

    SLOTS = 2  # batches in flight: the one being collected and the one started ahead of it

    def __init__(self, spec: str, mean: list[float], workers: int = 0):
        from mimkit.data.workers import start_pool, stop_pool

        self.spec = spec
        self.fill = tuple(round(255 * m) for m in mean)
        self.pool = start_pool(workers)
        self.workers = workers
        self._slots: Any = None  # made at the first submit, before the pool forks its workers
        self._made: list[Any] = []  # the slots, for the finalizer (which must not hold self)
        self._started = False
        self._busy: dict[int, list] = {}  # slot key -> the work writing into it
        self._turn = 0
        self._finalizer = weakref.finalize(self, stop_pool, self.pool, self._made) if self.pool is not None else None

    def __call__(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return self.collect(self.submit(images, keys))

    def _slot(self, arrays: np.ndarray) -> int | None:
        """A free shared slot for this batch, or None (no fork, or a batch larger than the first one)."""
        from mimkit.data.workers import SHARED_SLOTS, SharedSlots

        if not self._started:
            self._started = True
            if SHARED_SLOTS:
                self._slots = SharedSlots(self.SLOTS, arrays.nbytes)
                self._made.append(self._slots)
                self._row_shape = arrays.shape[1:]
        if self._slots is None or arrays.shape[1:] != self._row_shape or arrays.nbytes > self._slots.nbytes:
            return None
        key = self._slots.key(self._turn)
        self._turn += 1
        for future in self._busy.pop(key, []):  # a batch dropped without collect (a jump) may still write here
            future.exception()
        return key

    def submit(self, images: torch.Tensor, keys: torch.Tensor) -> Any:
        from mimkit.data.workers import slot_array, split_evenly

        arrays, key_list = images.numpy(), keys.tolist()
        if self.pool is None:
            return _rand_augment_here(self.spec, self.fill, arrays, key_list)
        parts = split_evenly(len(key_list), self.workers)
        slot = self._slot(arrays)
        if slot is None:
            return [
                self.pool.submit(rand_augment_arrays, self.spec, self.fill, arrays[i:j], key_list[i:j])
                for i, j in parts
            ]
        rows = slot_array(slot, self._row_shape)[: len(arrays)]
        rows[...] = arrays
        futures = [
            self.pool.submit(rand_augment_slot, self.spec, self.fill, slot, self._row_shape, i, j, key_list[i:j])
            for i, j in parts
        ]
        self._busy[slot] = futures
        return rows, futures

    def collect(self, handle: Any) -> torch.Tensor:
        if isinstance(handle, np.ndarray):
            return torch.from_numpy(handle)
        if isinstance(handle, tuple):  # augmented in place in a shared slot
            rows, futures = handle
            for future in futures:
                future.result()
            return torch.from_numpy(rows.copy())
        return torch.from_numpy(np.concatenate([future.result() for future in handle]))

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def rand_augment_slot(
    spec: str, fill: tuple[int, ...], slot: int, row_shape: tuple[int, ...], start: int, stop: int, keys: list[int]
) -> None:
    """rand_augment_arrays on rows start..stop of shared slot `slot`, in place (in a worker)."""
    from mimkit.data.workers import slot_array

    rows = slot_array(slot, row_shape)[start:stop]
    rows[...] = rand_augment_arrays(spec, fill, rows, keys)


_TRANSFORMS: dict[tuple[str, tuple[int, ...]], Any] = {}


def rand_augment_arrays(spec: str, fill: tuple[int, ...], images: np.ndarray, keys: list[int]) -> np.ndarray:
    """RandAugment of uint8 (N, C, H, W) arrays, image i seeded by keys[i]. Numpy and PIL only (it runs in forked
    workers). Leaves the global RNGs reseeded: in the training process use `_rand_augment_here`."""
    import random

    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    transform = _TRANSFORMS.get((spec, fill))
    if transform is None:
        transform = _TRANSFORMS[spec, fill] = rand_augment_transform(spec, {"translate_const": 10, "img_mean": fill})
    out = images.copy()
    for i, (img, key) in enumerate(zip(images, keys)):
        hwc = img.transpose(1, 2, 0)
        pil = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)
        for attempt in range(3):  # some timm op / Pillow pairs reject a drawn magnitude: draw again
            random.seed(int(key) * 3 + attempt)
            np.random.seed((int(key) * 3 + attempt) % 2**32)
            try:
                res = np.asarray(transform(pil), dtype=np.uint8)
            except ValueError:
                continue
            out[i] = res[None] if res.ndim == 2 else res.transpose(2, 0, 1)
            break
    return out


def _rand_augment_here(spec: str, fill: tuple[int, ...], images: np.ndarray, keys: list[int]) -> np.ndarray:
    """rand_augment_arrays in this process, leaving its global RNG states as they were (timm Mixup draws from
    numpy's)."""
    import random

    state, np_state = random.getstate(), np.random.get_state()
    try:
        return rand_augment_arrays(spec, fill, images, keys)
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) ITU-R 601 luma of an RGB batch (a 1-channel batch is returned as is)."""
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def color_jitter(
    x: torch.Tensor, keys: torch.Tensor, strength: float, mean: list[float], std: list[float], seed: int
) -> torch.Tensor:
    """Brightness, contrast and saturation jitter (factors uniform in [1 - s, 1 + s], like torchvision's
    ColorJitter(s, s, s) without hue, but always in this order) on a normalised batch; per-sample factors are keyed
    by sample, so they are reproducible. Saturation leaves gray images unchanged."""
    from mimkit.data.keyed_random import STREAM_JITTER, keyed_uniform

    if strength <= 0:
        return x
    factors = 1 - strength + 2 * strength * keyed_uniform(keys, 3, seed, STREAM_JITTER).to(x.device)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    img = x.float() * s + m
    img = (img * factors[:, 0].view(-1, 1, 1, 1)).clamp(0, 1)

    level = luminance(img).mean(dim=(1, 2, 3), keepdim=True)
    img = ((img - level) * factors[:, 1].view(-1, 1, 1, 1) + level).clamp(0, 1)
    g = luminance(img)
    img = ((img - g) * factors[:, 2].view(-1, 1, 1, 1) + g).clamp(0, 1)
    return ((img - m) / s).to(x.dtype)


def train_augment(cfg: Any) -> BatchAugment:
    """The training crop, flip and normalisation of a resolved config (data.*)."""
    d = cfg.data
    return BatchAugment(d.img_size, tuple(d.crop_scale), tuple(d.crop_ratio), d.hflip, d.mean, d.std, cfg.seed)


def timm_data_config(cfg: Any) -> dict[str, Any]:
    """timm's data config (what `timm.data.resolve_data_config` returns) for the input a run was trained on: its
    channels, size and normalisation; the whole image resized to the network size (mimkit's eval transform)."""
    d = cfg.data
    return {
        "input_size": [d.in_chans, d.img_size, d.img_size],
        "mean": list(d.mean),
        "std": list(d.std),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
