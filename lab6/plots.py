"""Image grids and figures shared by the CLI, the notebooks and the report."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .data import to_uint8


def _as_uint8(images) -> np.ndarray:
    """Float tensor (B, 3, H, W) in [-1, 1] or uint8 array (B, H, W, 3) -> uint8 (B, H, W, 3)."""
    if isinstance(images, torch.Tensor) and images.dtype != torch.uint8:
        return to_uint8(images)
    a = np.asarray(images)
    if a.ndim == 4 and a.shape[1] == 3 and a.shape[-1] != 3:
        a = a.transpose(0, 2, 3, 1)
    return a.astype(np.uint8)


def make_grid(images, nrow: int = 8, padding: int = 2, pad_value: int = 255) -> Image.Image:
    """Tile images into one PIL image, `nrow` per row (torchvision's make_grid, as a picture)."""
    a = _as_uint8(images)  # (B, H, W, 3)
    b, h, w, _ = a.shape
    ncol = min(nrow, b)
    nrows = -(-b // nrow)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, 3), pad_value, np.uint8)
    for i in range(b):
        r, c = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y:y + h, x:x + w] = a[i]
    return Image.fromarray(grid)


def labelled_grid(images, captions: Sequence[str], ncol: int = 8, scale: float = 1.6):
    """A matplotlib figure of images with a caption under each (e.g. their label sets)."""
    import matplotlib.pyplot as plt

    a = _as_uint8(images)
    n = len(a)
    nrows = -(-n // ncol)
    fig, axes = plt.subplots(nrows, ncol, figsize=(ncol * scale, nrows * (scale + 0.35)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(a[i], interpolation="nearest")
        ax.set_title(captions[i] if i < len(captions) else "", fontsize=6.5)
    fig.tight_layout()
    return fig


def caption(labels: Sequence[str]) -> str:
    """One caption line per object, e.g. 'red sphere\\ncyan cube'."""
    return "\n".join(labels)
