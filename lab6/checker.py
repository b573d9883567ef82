"""The count checker: how many copies of each object an image shows, and exact-scene accuracy.

The course's top-k metric reads k classes per image and cannot see a duplicated or an extra object. The checker
is the evaluator's ResNet-18 with a 24 x 4 head: per object class a count of 0, 1, 2 or 3+. It is trained on
renders made for it (`lab6.checker_train`: scenes with duplicates and unrequested objects, their object lists
in `counts.json`, a file of the checker's own), so the course layout and its label checks stay as they are.

An image is an *exact scene* when the checker reads exactly the requested objects, each once, and nothing else.
A checker file saved with `mirror_mean: True` reads each image and its mirror image and averages the two count
distributions: a mirrored scene holds the same objects, and the average reads half-hidden objects more steadily.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import labels as L
from .data import PROJECT_ROOT, from_uint8
from .devices import resolve_device
from .errors import CheckpointError, DataError
from .evaluator import ImageResult, ResNet18

COUNTS = 4  # count classes per object: 0, 1, 2, 3 or more
SHIPPED = PROJECT_ROOT / "pretrained" / "checker" / "checker.pth"


# ---------------------------------------------------------------- reading counts
def requested_counts(labels) -> torch.Tensor:
    """Count classes (B, 24) that a list of label sets (or a multi-hot tensor) asks for: 1 per object."""
    y = labels if torch.is_tensor(labels) else L.encode_batch(labels, "labels")
    return (y > 0.5).long()


class CountChecker:
    """Reads per-class object counts (0, 1, 2, 3+) off images (B, 3, 64, 64) in [-1, 1]."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 batch_size: int = 256):
        self.path = Path(path) if path is not None else SHIPPED
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: count checker not found; train one with `lab6 train-checker`")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        try:
            ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
            self.model = ResNet18(num_classes=L.NUM_CLASSES * COUNTS, width=int(ckpt.get("width", 64)))
            self.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()})
        except Exception as e:
            raise CheckpointError(f"{self.path}: not a count checker checkpoint ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
        self.model.to(self.device).eval()
        self.info = {k: v for k, v in ckpt.items() if k != "model"}
        self.mirror_mean = bool(self.info.get("mirror_mean", False))

    def __repr__(self) -> str:
        return f"CountChecker({str(self.path)!r}, device={str(self.device)!r})"

    @torch.no_grad()
    def counts(self, images) -> torch.Tensor:
        """Count classes (B, 24) in 0..3 of float images in [-1, 1] or uint8 images."""
        x = torch.as_tensor(images)
        x = from_uint8(x) if x.dtype == torch.uint8 else x.float()
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (64, 64):
            raise DataError(f"checker: expected images (B, 3, 64, 64), got {tuple(x.shape)}")
        out = [self.probabilities(x[i:i + self.batch_size].to(self.device)).argmax(-1).cpu()
               for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, L.NUM_CLASSES, dtype=torch.long)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Count distributions (B, 24, 4) of x (B, 3, 64, 64), averaged with the mirror image's if the file says so."""
        views = [x, x.flip(-1)] if self.mirror_mean else [x]
        return sum(self.model.logits(v).float().view(-1, L.NUM_CLASSES, COUNTS).softmax(-1) for v in views) / len(views)

    def report(self, images, labels) -> dict:
        """Exact-scene accuracy and the share of images with a duplicate, an unrequested or a missing object."""
        return scene_report(self.counts(images), requested_counts(labels))


def scene_report(counts: torch.Tensor, wanted: torch.Tensor) -> dict:
    """Exact-scene accuracy of read counts (B, 24) against requested counts (B, 24), and why images miss."""
    asked = wanted > 0
    n = max(1, counts.shape[0])
    return {"exact": float((counts == wanted).all(1).sum()) / n,
            "duplicate": float(((counts > 1) & asked).any(1).sum()) / n,
            "unrequested": float(((counts > 0) & ~asked).any(1).sum()) / n,
            "missing": float(((counts == 0) & asked).any(1).sum()) / n,
            "images": int(counts.shape[0])}


# ---------------------------------------------------------------- one image's reading, in words
DUPLICATE, UNREQUESTED, MISSING = "duplicate", "unrequested", "missing"
JUDGES_DIFFER = ("The two judges count different things: the evaluator's top-k only sees which k classes score "
                 "highest, so a duplicate or a look-alike that takes a requested object's slot is one top-k miss "
                 "(or none); the checker counts the copies of every object, so it reads a duplicate, an object "
                 "nobody asked for and a requested object drawn zero times, and its shares are of images, not of "
                 "labels.")


def read_scene(counts, wanted) -> list[str]:
    """What the checker reads wrong in one image, from its counts (24,) against the requested counts (24,):
    e.g. ['duplicate: brown sphere ×2', 'missing: brown cylinder', 'unrequested: red cube']; [] = exact."""
    out = {DUPLICATE: [], MISSING: [], UNREQUESTED: []}
    for j, (n, w) in enumerate(zip(torch.as_tensor(counts).tolist(), torch.as_tensor(wanted).tolist())):
        copies = f"×{n}+" if n >= COUNTS - 1 else f"×{n}"
        if w > 0 and n > w:
            out[DUPLICATE].append(f"{L.OBJECTS[j]} {copies}")
        elif w > 0 and n == 0:
            out[MISSING].append(L.OBJECTS[j])
        elif w == 0 and n > 0:
            out[UNREQUESTED].append(L.OBJECTS[j] + (f" {copies}" if n > 1 else ""))
    return [f"{kind}: {', '.join(names)}" for kind, names in out.items() if names]


def evaluator_reading(result: ImageResult) -> str:
    """The evaluator's top-k verdict on one image in words: each miss as 'wanted → seen (kind)'."""
    if not result.misses:
        return f"all {len(result.labels)} in its top-{len(result.labels)}"
    return "; ".join(f"{m.object} → {m.seen or '?'} ({m.kind})" for m in result.misses)


def error_rows(split: str, results: list[ImageResult], counts: torch.Tensor) -> list[dict]:
    """One row per image that either judge faults, worst first: the file and index (`test.json #3`), what was
    wanted, the checker's reading (a duplicate named as such) and, beside it, the evaluator's top-k reading."""
    wanted = requested_counts([r.labels for r in results])
    rows = []
    for r, c, w in zip(results, counts, wanted):
        checker_says = read_scene(c, w)
        if not r.misses and not checker_says:
            continue
        rows.append({"image": f"{split}.json #{r.index}", "wanted": ", ".join(r.labels),
                     "checker reads": "; ".join(checker_says) or "exactly the requested objects",
                     "evaluator's top-k": evaluator_reading(r),
                     "_order": (r.hits / max(1, len(r.labels)), -len(checker_says))})
    return rows


def worst_images(rows: list[dict], n: int = 8) -> list[dict]:
    """The n rows of `error_rows` (any splits) with the fewest top-k hits, then the most checker faults."""
    ranked = sorted(rows, key=lambda r: r["_order"])[:n]
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in ranked]


def image_verdict(image: torch.Tensor, labels: list[str], evaluator, checker: CountChecker | None = None) -> dict:
    """Whether one image (3, 64, 64) in [-1, 1] shows its label set, by each judge: {'evaluator': {hits, labels,
    reading}, 'checker': what it reads wrong ([] = exactly the requested objects)}; no checker, no 'checker'."""
    r = evaluator.breakdown(image[None], [labels])[0]
    out = {"evaluator": {"hits": r.hits, "labels": len(r.labels), "reading": evaluator_reading(r)}}
    if checker is not None:
        out["checker"] = read_scene(checker.counts(image[None])[0], requested_counts([labels])[0])
    return out
