"""The 24-object vocabulary of iCLEVR and multi-hot encoding of label sets."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import torch

from .errors import LabelError

SHAPES = ("cube", "sphere", "cylinder")
COLOURS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
# CLEVR's palette (sRGB 0-255): what the renderer paints and the plots' colour swatches.
PALETTE: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
# Course order: all cubes (0-7), then spheres (8-15), then cylinders (16-23); colours in COLOURS order.
OBJECTS: tuple[str, ...] = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)
OBJECT_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(OBJECTS)}
NUM_CLASSES = len(OBJECTS)  # 24
MAX_OBJECTS = 3  # iCLEVR scenes hold 1-3 objects


def colour_of(index: int) -> str:
    """Colour word of object `index`."""
    return COLOURS[index % len(COLOURS)]


def shape_of(index: int) -> str:
    """Shape word of object `index`."""
    return SHAPES[index // len(COLOURS)]


def suggest(name: str, n: int = 3) -> list[str]:
    """Closest valid object names to a misspelt `name`."""
    return difflib.get_close_matches(str(name).strip().lower(), OBJECTS, n=n, cutoff=0.4)


def validate(labels: object, where: str = "label set", max_objects: int = MAX_OBJECTS) -> list[str]:
    """Check one label set (list of 1..max_objects distinct object names) and return it as a list."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise LabelError(f"{where}: expected a list of object names such as [\"red sphere\"], got {type(labels).__name__}")
    labels = list(labels)
    if not labels:
        raise LabelError(f"{where}: empty label set; give 1 to {max_objects} object names")
    if len(labels) > max_objects:
        raise LabelError(f"{where}: {len(labels)} objects, at most {max_objects} are supported")
    seen: set[str] = set()
    for j, name in enumerate(labels):
        if not isinstance(name, str):
            raise LabelError(f"{where}[{j}]: expected an object name (string), got {name!r}")
        if name not in OBJECT_TO_INDEX:
            close = suggest(name)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
                f"; valid names are '<colour> <shape>' with colours {', '.join(COLOURS)} and shapes {', '.join(SHAPES)}"
            raise LabelError(f"{where}[{j}]: unknown object {name!r}{hint}")
        if name in seen:
            raise LabelError(f"{where}[{j}]: duplicate object {name!r}; each object may appear once per set")
        seen.add(name)
    return labels


def encode(labels: Sequence[str], where: str = "label set", max_objects: int = MAX_OBJECTS) -> torch.Tensor:
    """Multi-hot float vector (24,) of one label set."""
    out = torch.zeros(NUM_CLASSES)
    for name in validate(labels, where, max_objects):
        out[OBJECT_TO_INDEX[name]] = 1.0
    return out


def encode_batch(label_sets: Iterable[Sequence[str]], where: str = "label sets",
                 max_objects: int = MAX_OBJECTS) -> torch.Tensor:
    """Multi-hot float matrix (B, 24) of several label sets."""
    rows = [encode(s, f"{where}[{i}]", max_objects) for i, s in enumerate(label_sets)]
    if not rows:
        raise LabelError(f"{where}: no label sets given")
    return torch.stack(rows)


def decode(multi_hot: torch.Tensor | Sequence[float], threshold: float = 0.5) -> list[str] | list[list[str]]:
    """Object names of a multi-hot vector (24,), or one list per row of a (B, 24) matrix."""
    y = torch.as_tensor(multi_hot)
    if y.shape[-1] != NUM_CLASSES:
        raise LabelError(f"decode: expected a last dimension of {NUM_CLASSES}, got shape {tuple(y.shape)}")
    if y.dim() == 2:
        return [decode(row, threshold) for row in y]
    return [OBJECTS[i] for i in torch.nonzero(y > threshold).flatten().tolist()]
