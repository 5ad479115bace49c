"""Fixed 2-D sine-cosine position embeddings (MAE): half the channels encode the row, half the column."""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.reshape(-1).double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """(grid*grid [+1], dim) float32; the class token's row is zeros, as in MAE."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs an embedding width divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # MAE's np.meshgrid(w, h) order
    emb_h = sincos_1d(dim // 2, grid_w)
    emb_w = sincos_1d(dim // 2, grid_h)
    emb = torch.cat([emb_h, emb_w], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
