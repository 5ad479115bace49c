"""The in-memory data types every source produces and every consumer reads: ImageSet (uint8 images, labels,
stable sample ids, task targets) and DataBundle (train and held-out sets, classes, skipped files)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, S, S) uint8 (CPU; may be memmap-backed)
    labels: torch.Tensor | None  # (N,) int64
    ids: torch.Tensor  # (N,) int64, stable sample identities
    targets: torch.Tensor | None = None  # geometric tasks: (N, 4) boxes, (N, 1) angles or (N, 64) depth maps

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, positions: torch.Tensor | np.ndarray) -> "ImageSet":
        pos = torch.as_tensor(positions, dtype=torch.int64)
        images = self.images[pos]
        labels = self.labels[pos] if self.labels is not None else None
        targets = self.targets[pos] if self.targets is not None else None
        return ImageSet(images, labels, self.ids[pos], targets)

    def batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, sample ids) for these positions."""
        return self.images[positions], self.ids[positions]


@dataclass
class DataBundle:
    train: ImageSet
    heldout: ImageSet
    heldout_source: str  # 'test split', 'val_root', or 'x% of train'
    classes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        extra = f", {len(self.skipped)} unreadable file(s) skipped" if self.skipped else ""
        return (
            f"train {len(self.train)} images, held-out {len(self.heldout)} ({self.heldout_source})"
            f"{', ' + str(len(self.classes)) + ' classes' if self.classes else ''}{extra}"
        )
