"""Image grids (torchvision.utils) for people, run folders and ``render()``."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch


def grid_array(images: torch.Tensor, nrow: int | None = None, padding: int = 2, upscale: int = 1) -> np.ndarray:
    """Tile images into one RGB array.

    Args:
        images: (B, 1, H, W) float in [-1, 1].
        nrow: images per row (default: about sqrt(B)).
        padding: pixels between tiles.
        upscale: integer nearest-neighbour zoom of each tile.

    Returns:
        (H', W', 3) uint8 array.
    """
    from torchvision.utils import make_grid

    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    x = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    if upscale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="nearest")
    nrow = nrow or math.ceil(math.sqrt(len(x)))
    g = make_grid(x, nrow=nrow, padding=padding, pad_value=1.0)  # (3, H', W') in [0, 1]
    return (g.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, upscale: int = 2) -> Path:
    """Write ``images`` (B, 1, H, W) in [-1, 1] as a PNG grid; returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid_array(images, nrow=nrow, upscale=upscale)).save(path)
    return path
