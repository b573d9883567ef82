"""The iCLEVR data layer: label files, image folders, an in-memory torch Dataset and object masks.

Every dataset path goes through this module, which validates the course layout once:

    root/objects.json        {"gray cube": 0, ...}         (must equal lab6.labels.OBJECT_TO_INDEX)
    root/train.json          {"CLEVR_train_001032_0.png": ["yellow sphere"], ...}
    root/test.json           [["gray cube"], ["red cube", "blue sphere"], ...]
    root/new_test.json       (same format; new_test stresses attribute binding)
    root/unseen_test.json    (ours; combinations never seen in train.json)
    root/iclevr/*.png        the training images
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from . import labels as L
from .errors import DataError, LabelError
from .io import atomic_path

TEST_SPLITS = ("test", "new_test", "unseen_test")


def _project_root() -> Path:
    """The repository root for an editable install (it holds pyproject.toml), else the working folder."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


PROJECT_ROOT = _project_root()
DATA_DIR = Path(os.environ.get("LAB6_DATA_DIR", PROJECT_ROOT / "data"))


def require_json(path: str | os.PathLike):
    """Parse a JSON file that must be there: DataError or LabelError naming the file (and the line and column)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LabelError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def read_objects(path: str | os.PathLike) -> dict[str, int]:
    """Read objects.json and check it is the course vocabulary in the course order."""
    obj = require_json(path)
    if not isinstance(obj, dict):
        raise LabelError(f"{path}: expected a JSON object {{name: index}}, got {type(obj).__name__}")
    if obj != L.OBJECT_TO_INDEX:
        for name, idx in obj.items():
            if name not in L.OBJECT_TO_INDEX:
                raise LabelError(f"{path}: entry {name!r} is not one of the 24 course objects")
            if idx != L.OBJECT_TO_INDEX[name]:
                raise LabelError(f"{path}: entry {name!r} has index {idx!r}, the course order needs "
                                 f"{L.OBJECT_TO_INDEX[name]} (a different order is not remapped)")
        missing = [n for n in L.OBJECTS if n not in obj]
        raise LabelError(f"{path}: missing {len(missing)} of the 24 objects, e.g. {missing[0]!r}")
    return dict(obj)


def read_train(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read train.json: {image file name: [object names]}, every entry validated."""
    obj = require_json(path)
    if not isinstance(obj, dict):
        raise LabelError(f"{path}: expected a JSON object {{\"image.png\": [names]}}, got {type(obj).__name__}")
    if not obj:
        raise LabelError(f"{path}: no training images listed")
    return {name: L.validate(labels, f"{path}: entry {name!r}") for name, labels in obj.items()}


def read_label_file(path: str | os.PathLike) -> list[list[str]]:
    """Read a test file (test.json, new_test.json, ...): a list of label sets, every entry validated."""
    obj = require_json(path)
    if not isinstance(obj, list):
        raise LabelError(f"{path}: expected a JSON list of label sets like [[\"red sphere\"], ...], "
                         f"got {type(obj).__name__}")
    if not obj:
        raise LabelError(f"{path}: no label sets listed")
    return [L.validate(s, f"{path}: entry {i}") for i, s in enumerate(obj)]


SYNTH_STATE = ".synth.json"  # what `lab6 synth` records beside the renders it writes


def is_synthetic(root: str | os.PathLike) -> bool:
    """Whether `root` was rendered by `lab6 synth` (not the course's images)."""
    return (Path(root) / SYNTH_STATE).exists()


# The renderer version and settings that `lab6 synth` records in .synth.json with its default options, as
# synth_fingerprint digests them: the renders the shipped judges were trained on. tests/test_synth.py checks that
# lab6.synth still renders this; a renderer change fails it until this digest is updated.
DEFAULT_SYNTH_FINGERPRINT = "f5a797ed81c8aa4e"


def synth_fingerprint(renderer: object, config: object) -> str:
    """A short digest of a renderer version and its settings (a .synth.json's `renderer` and `config`)."""
    text = json.dumps({"renderer": renderer, "config": config}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_default_synth(root: str | os.PathLike) -> bool:
    """Whether `root` holds renders of the default renderer and settings (its .synth.json says so): the shipped
    evaluator's kind of scene."""
    try:
        state = json.loads((Path(root) / SYNTH_STATE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "renderer" in state and "config" in state \
        and synth_fingerprint(state["renderer"], state["config"]) == DEFAULT_SYNTH_FINGERPRINT


def default_data_root() -> Path:
    """data/iclevr when it holds the course's train.json, else data/synth (the rendered default)."""
    course = DATA_DIR / "iclevr"
    return course if (course / "train.json").exists() else DATA_DIR / "synth"


class CourseData:
    """A dataset folder in the course layout, its label files validated on open."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_data_root()
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found; render one with "
                            f"`lab6 synth --out data/synth` or put the course files in data/iclevr/")
        self.image_dir = self.root / "iclevr"
        objects = self.root / "objects.json"
        if objects.exists():
            read_objects(objects)
        self.train = read_train(self.root / "train.json")

    def label_path(self, name: str) -> Path:
        """Path of a test label file, e.g. label_path('new_test')."""
        name = name[:-5] if name.endswith(".json") else name
        return self.root / f"{name}.json"

    def splits(self) -> list[str]:
        """The test splits present in this folder, in TEST_SPLITS order."""
        return [s for s in TEST_SPLITS if self.label_path(s).exists()]

    def label_sets(self, name: str) -> list[list[str]]:
        """The label sets of test file `name` ('test', 'new_test' or 'unseen_test')."""
        return read_label_file(self.label_path(name))

    def missing_images(self) -> list[str]:
        """File names in train.json with no image in iclevr/."""
        present = set(os.listdir(self.image_dir)) if self.image_dir.is_dir() else set()
        return [n for n in self.train if n not in present]

    def check_images(self) -> None:
        """Raise DataError naming how many referenced images are missing and the first few."""
        missing = self.missing_images()
        if missing:
            first = ", ".join(missing[:5])
            raise DataError(f"{self.image_dir}: {len(missing)} of {len(self.train)} images listed in "
                            f"train.json are missing (first: {first})")

    def __repr__(self) -> str:
        return f"CourseData({str(self.root)!r}, train={len(self.train)}, splits={self.splits()})"


def training_fingerprint(data: CourseData, resolution: int | None = None) -> str:
    """sha256 over train.json, the resolution and each listed image's name, size and mtime (a stat, no decode)."""
    h = hashlib.sha256((data.root / "train.json").read_bytes())
    h.update(f"\0resolution={resolution}\0".encode())
    for name in data.train:  # train.json order
        try:
            st = os.stat(data.image_dir / name)
        except (FileNotFoundError, NotADirectoryError):
            data.check_images()  # names how many are missing, as a load would
            raise DataError(f"{data.image_dir / name}: image not found") from None
        except OSError as e:
            raise DataError(f"{data.image_dir / name}: cannot read ({e.strerror or e})") from None
        h.update(json.dumps([name, st.st_size, st.st_mtime_ns]).encode() + b"\n")
    return h.hexdigest()


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; 16/32-bit and float greyscale are scaled, not clipped, to 0..255."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float64)
        if im.mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0  # float images in [0, 1]
        elif im.mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0  # 16-bit: 65535 -> 255
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))  # mode L
    return im.convert("RGB")


def object_masks(images: torch.Tensor, threshold: float = 0.05, batch_size: int = 512) -> torch.Tensor:
    """Objects and their shadows in uint8 images (N, 3, H, W): pixels far from a smooth fit of the floor.

    The floor (and backdrop) is fitted per image by a cubic polynomial in x, y on every other pixel, refitted
    twice on the pixels that agree with it; masks are dilated by one pixel. Returns bool (N, H, W).
    """
    n, _, h, w = images.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    basis = torch.stack([torch.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy, yy ** 3, xx * xx * yy], -1)
    sub = basis[::2, ::2].reshape(1, -1, basis.shape[-1])                  # (1, P, 8) fitting points
    basis = basis.reshape(1, h * w, -1)                                     # (1, HW, 8)
    out = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(0, n, batch_size):
        x = images[i:i + batch_size].cpu().float() / 255                    # (b, 3, H, W)
        col = x[..., ::2, ::2].reshape(x.shape[0], 3, -1).transpose(1, 2)   # (b, P, 3)
        weight = torch.ones(x.shape[0], col.shape[1], 1)
        for _ in range(3):  # weighted least squares through the normal equations
            aw = sub * weight                                                # (b, P, 8)
            gram = aw.transpose(1, 2) @ sub + 1e-4 * torch.eye(sub.shape[-1])  # (b, 8, 8)
            coef = torch.linalg.solve(gram, aw.transpose(1, 2) @ col)        # (b, 8, 3)
            weight = ((col - sub @ coef).abs().amax(2, keepdim=True) < threshold).float()
        floor = (basis @ coef).transpose(1, 2).reshape(x.shape)             # (b, 3, H, W)
        m = ((x - floor).abs().amax(1, keepdim=True) > threshold).float()   # (b, 1, H, W)
        out[i:i + batch_size] = F.max_pool2d(m, 3, 1, 1)[:, 0] > 0
    return out


def load_image(path: str | os.PathLike, resolution: int = 64) -> np.ndarray:
    """Read any image as uint8 RGB (R, R, 3), resized with antialiasing when its size differs."""
    try:
        with Image.open(path) as im:
            return resize_rgb(_to_rgb(im), resolution)
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def resize_rgb(im: Image.Image | np.ndarray, resolution: int = 64) -> np.ndarray:
    """An RGB image (PIL or uint8 (H, W, 3)) as uint8 (R, R, 3), resized bicubic with antialiasing when it differs."""
    im = Image.fromarray(im) if isinstance(im, np.ndarray) else im
    if im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(im, dtype=np.uint8).copy()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float images (B, 3, H, W) in [-1, 1] -> uint8 array (B, H, W, 3)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def from_uint8(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, 3) or (B, 3, H, W) tensor -> float (B, 3, H, W) in [-1, 1]."""
    t = torch.as_tensor(a)
    if t.shape[-1] == 3 and t.shape[1] != 3:
        t = t.permute(0, 3, 1, 2)
    return t.float() / 127.5 - 1.0


def load_images(paths: list[Path], resolution: int = 64, threads: int = 4) -> np.ndarray:
    """Decode many images in parallel into one uint8 array (N, R, R, 3)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        arrays = list(pool.map(lambda p: load_image(p, resolution), paths, chunksize=64))
    return np.stack(arrays) if arrays else np.zeros((0, resolution, resolution, 3), np.uint8)


def load_image_folder(folder: str | os.PathLike, n: int, resolution: int = 64) -> torch.Tensor:
    """Read folder/0.png .. folder/{n-1}.png as float (n, 3, R, R) in [-1, 1]."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    paths = [folder / f"{i}.png" for i in range(n)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{folder}: {len(missing)} of {n} images missing (first: {', '.join(missing[:5])}); "
                        f"expected 0.png .. {n - 1}.png, one per label set")
    return from_uint8(load_images(paths, resolution))


class IclevrDataset(torch.utils.data.Dataset):
    """Training images and their multi-hot labels, decoded once and held in memory as uint8.

    `ds[i]` -> (image float (3, R, R) in [-1, 1], multi-hot float (24,)).
    The decoded array is cached in `root/.cache/`, keyed by `training_fingerprint` (train.json, R and every
    image's size and modification time), so later runs load in a second and a changed image is decoded again.
    """

    def __init__(self, root: str | os.PathLike | None = None, resolution: int = 64, cache: bool = True,
                 progress: bool = False):
        self.data = CourseData(root)
        self.root, self.resolution = self.data.root, resolution
        self.data.check_images()
        self.names = list(self.data.train)
        self.labels = L.encode_batch([self.data.train[n] for n in self.names])  # (N, 24)
        self.images = torch.from_numpy(self._load(cache, progress)).permute(0, 3, 1, 2).contiguous()  # (N,3,R,R) uint8

    def _cache_path(self) -> Path:
        """The cache file for this folder's current images at this resolution."""
        key = training_fingerprint(self.data, self.resolution)
        return self.root / ".cache" / f"images_{self.resolution}px_{key}.npy"

    def _load(self, cache: bool, progress: bool) -> np.ndarray:
        path = self._cache_path()  # stat the images before decoding: a file changed meanwhile misses next time
        if cache and path.exists():
            try:
                arr = np.load(path, mmap_mode=None)
                if arr.shape == (len(self.names), self.resolution, self.resolution, 3):
                    return arr
            except (OSError, ValueError):
                pass  # a corrupt cache is rebuilt below
        paths = [self.data.image_dir / n for n in self.names]
        if progress:
            from tqdm.auto import tqdm
            arr = np.stack([load_image(p, self.resolution) for p in tqdm(paths, desc="decode images")])
        else:
            arr = load_images(paths, self.resolution)
        if cache:
            try:
                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, arr)
            except OSError:
                pass  # read-only dataset folder: keep the array in memory only
            else:
                for old in path.parent.glob(f"images_{self.resolution}px_*.npy"):
                    if old != path:  # built from other files at this resolution: never valid again
                        try:
                            old.unlink()
                        except OSError:
                            pass  # gone already, or not ours to delete: it is never read anyway
        return arr

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i].float() / 127.5 - 1.0, self.labels[i]

    def __repr__(self) -> str:
        return f"IclevrDataset({str(self.root)!r}, n={len(self)}, resolution={self.resolution})"


def label_stats(label_sets: list[list[str]]) -> dict:
    """Objects per set, per-class frequency (24,) and co-occurrence counts (24, 24) of some label sets."""
    y = L.encode_batch(label_sets).numpy()  # (N, 24)
    k = y.sum(1).astype(int)
    return {
        "sets": len(label_sets),
        "labels": int(k.sum()),
        "objects_per_set": {int(n): int((k == n).sum()) for n in sorted(set(k.tolist()))},
        "class_counts": y.sum(0).astype(int),  # (24,)
        "cooccurrence": (y.T @ y).astype(int),  # (24, 24), diagonal = class counts
    }


def binding_stats(label_sets: list[list[str]]) -> dict:
    """How often a set repeats a colour across shapes or a shape across colours (attribute binding)."""
    rep_colour = sum(len({n.split()[0] for n in s}) < len(s) for s in label_sets)
    rep_shape = sum(len({n.split()[1] for n in s}) < len(s) for s in label_sets)
    multi = sum(len(s) > 1 for s in label_sets)
    return {"multi_object_sets": multi, "repeated_colour": rep_colour, "repeated_shape": rep_shape}


def unseen_pairs(label_sets: list[list[str]], train: dict[str, list[str]]) -> int:
    """Number of object pairs in `label_sets` that never appear together in any training image."""
    seen = {frozenset((a, b)) for s in train.values() for a in s for b in s if a != b}
    return sum(frozenset((a, b)) not in seen for s in label_sets for i, a in enumerate(s) for b in s[i + 1:])
