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


def plot_label_stats(stats: dict, title: str = ""):
    """Bar chart of class frequencies and a heat map of co-occurrences (from data.label_stats)."""
    import matplotlib.pyplot as plt

    from .labels import OBJECTS

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1.3, 1]})
    ax1.bar(range(len(OBJECTS)), stats["class_counts"], color=[_swatch(n) for n in OBJECTS], edgecolor="k")
    ax1.set_xticks(range(len(OBJECTS)), OBJECTS, rotation=90, fontsize=7)
    ax1.set_ylabel("images containing the object")
    ax1.set_title(f"{title} class frequency".strip())
    co = stats["cooccurrence"].astype(float).copy()
    co[range(len(OBJECTS)), range(len(OBJECTS))] = float("nan")
    im = ax2.imshow(co, cmap="viridis")
    ax2.set_xticks(range(len(OBJECTS)), OBJECTS, rotation=90, fontsize=6)
    ax2.set_yticks(range(len(OBJECTS)), OBJECTS, fontsize=6)
    ax2.set_title(f"{title} co-occurrence (off-diagonal)".strip())
    fig.colorbar(im, ax=ax2, fraction=0.046)
    fig.tight_layout()
    return fig


_PALETTE = {"gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
            "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51)}


def _swatch(name: str) -> tuple[float, float, float]:
    """CLEVR's RGB colour of an object name, as matplotlib floats."""
    return tuple(c / 255 for c in _PALETTE[name.split()[0]])


class Table:
    """A small table of rows {name: {column: value}} that prints as text and renders as HTML in Jupyter."""

    def __init__(self, rows: dict[str, dict], index_name: str = "", floatfmt: str = ".3f"):
        self.rows, self.index_name, self.floatfmt = rows, index_name, floatfmt
        self.columns = list(dict.fromkeys(c for r in rows.values() for c in r))

    def _fmt(self, v) -> str:
        return format(v, self.floatfmt) if isinstance(v, float) else str(v)

    def __str__(self) -> str:
        head = [self.index_name] + self.columns
        body = [[str(k)] + [self._fmt(r.get(c, "")) for c in self.columns] for k, r in self.rows.items()]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        line = lambda cells: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(cells, widths)))
        return "\n".join([line(head)] + [line(b) for b in body])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        th = "".join(f"<th>{c}</th>" for c in [self.index_name] + self.columns)
        trs = "".join("<tr><th>{}</th>{}</tr>".format(k, "".join(f"<td>{self._fmt(r.get(c, ''))}</td>"
                                                             for c in self.columns)) for k, r in self.rows.items())
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"
