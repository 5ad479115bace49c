"""A grid of original | masked input | reconstruction, train images beside held-out images, with fixed masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mimkit.data.imageset import ImageSet  # noqa: E402
from mimkit.data.transforms import denormalize, eval_transform  # noqa: E402
from mimkit.heldout import FIXED_EPOCH, fixed_subset  # noqa: E402


def _panels(
    method: Any, data: ImageSet, cfg: Any, n: int, device: torch.device, true_patch_stats: bool
) -> dict[str, torch.Tensor]:
    subset = fixed_subset(data, n, cfg.seed)
    images = eval_transform(subset.images.to(device), cfg.data.img_size, cfg.data.mean, cfg.data.std)
    out = method.reconstruct(images, subset.ids, FIXED_EPOCH, true_patch_stats=true_patch_stats)
    masked = denormalize(out["masked"], cfg.data.mean, cfg.data.std)
    masked = masked * (1 - out["pixel_mask"]) + 0.5 * out["pixel_mask"]  # masked patches shown grey
    return {
        "original": denormalize(out["original"], cfg.data.mean, cfg.data.std),
        "masked": masked,
        "reconstruction": denormalize(out["reconstruction"], cfg.data.mean, cfg.data.std),
    }


def _show(ax, img: torch.Tensor) -> None:
    img = img.detach().float().cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


@torch.no_grad()
def reconstruction_figure(
    method: Any,
    train: ImageSet,
    heldout: ImageSet,
    cfg: Any,
    out: str | Path,
    n: int = 6,
    device: torch.device | str = "cpu",
    true_patch_stats: bool = False,
) -> Path:
    """`true_patch_stats`: de-normalise per-patch-normalised predictions with each masked patch's own statistics
    (leaks; see Method.reconstruct); the title says how the predictions were de-normalised."""
    method = method.eval()
    device = torch.device(device)
    sides = {
        side: _panels(method, data, cfg, n, device, true_patch_stats)
        for side, data in (("train", train), ("held-out", heldout))
    }
    rows = min(n, len(train), len(heldout))
    fig, axes = plt.subplots(rows, 6, figsize=(6 * 1.5, rows * 1.5 + 0.6), dpi=110, squeeze=False)
    for col_offset, (side, panels) in zip((0, 3), sides.items()):
        for j, name in enumerate(("original", "masked", "reconstruction")):
            for i in range(rows):
                _show(axes[i, col_offset + j], panels[name][i])
            axes[0, col_offset + j].set_title(f"{side}\n{name}", fontsize=8)
    note = method.reconstruction_note(true_patch_stats)
    title = f"{cfg.method.name.upper()} reconstructions (fixed masks, ratio {cfg.method.mask_ratio})"
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10 if not note else 9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
