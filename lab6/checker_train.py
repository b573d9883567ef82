"""Training the count checker: its own renders (scenes with copies, look-alikes and extra objects, their object
lists in `counts.json`) and the training loop behind `lab6 train-checker`."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import labels as L
from . import synth as S
from .checker import COUNTS, CountChecker
from .config import check_finite_fields
from .data import load_images
from .devices import resolve_device
from .errors import ConfigError, DataError
from .evaluator import ResNet18
from .evaluator_train import augment, lr_factor
from .io import atomic_path, check_writable_dir, ensure_writable_dir, write_json

COUNTS_FILE = "counts.json"  # {image file: [object names, repeated for copies]}
_S_COUNT = 11  # the renderer's random stream of checker scenes (synth uses 1-4)


# ---------------------------------------------------------------- the checker's own renders
def sample_count_scene(rng: np.random.Generator) -> list[str]:
    """Object names of one checker scene: 1-3 distinct objects (40 %: a binding-heavy set like new_test's), then,
    half the time, 1-2 more: a copy of one of them, a look-alike (same colour or same shape) or any object."""
    if rng.random() < 0.4:
        kinds = [k for k, _ in S.BINDING_PATTERNS]
        base = S.binding_set(rng, kinds[int(rng.integers(len(kinds)))])
    else:
        base = [L.OBJECTS[i] for i in rng.permutation(L.NUM_CLASSES)[:int(rng.integers(1, L.MAX_OBJECTS + 1))]]
    extras = []
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 3))):
            r, (colour, shape) = rng.random(), base[int(rng.integers(len(base)))].split()
            if r < 0.5:
                extras.append(f"{colour} {shape}")  # a copy
            elif r < 0.8:  # a look-alike
                extras.append(f"{colour} {L.SHAPES[int(rng.integers(3))]}" if rng.random() < 0.5
                              else f"{L.COLOURS[int(rng.integers(8))]} {shape}")
            else:
                extras.append(L.OBJECTS[int(rng.integers(L.NUM_CLASSES))])
    return base + extras


def write_count_dataset(out: str | os.PathLike, scenes: int = 12000, seed: int = 2, workers: int = 0,
                        progress: bool = True) -> dict:
    """Render `scenes` checker scenes to out/images/ (one image per prefix of each scene) and out/counts.json."""
    if isinstance(scenes, bool) or not isinstance(scenes, int) or scenes < 1:
        raise ConfigError(f"--scenes {scenes!r}: render at least 1 scene")
    out = ensure_writable_dir(out)
    (out / "images").mkdir(exist_ok=True)
    counts, jobs = {}, []
    for i in range(scenes):
        names = sample_count_scene(S.scene_rng(seed, _S_COUNT, 0, i))
        files = []
        for k in range(len(names)):
            fname = f"count_{i:06d}_{k}.png"
            counts[fname] = names[:k + 1]
            files.append((f"images/{fname}", k))
        jobs.append(S.RenderJob((_S_COUNT, 1, i), names, files))
    rendered, _, _ = S.render_jobs(jobs, seed, S.SynthConfig(), out, workers, progress, desc=f"checker renders {out}")
    write_json(out / COUNTS_FILE, counts)  # last: its presence means every image is there
    return {"out": str(out), "images": len(counts), "scenes": scenes, "rendered_scenes": rendered}


def count_targets(object_lists: list[list[str]]) -> torch.Tensor:
    """Count classes (N, 24) in 0..3 (3 = three or more) of lists of object names, copies repeated."""
    y = torch.zeros(len(object_lists), L.NUM_CLASSES, dtype=torch.long)
    for i, names in enumerate(object_lists):
        for name in names:
            if name not in L.OBJECT_TO_INDEX:
                raise DataError(f"object list {i}: unknown object {name!r}; valid: e.g. {', '.join(L.OBJECTS[:3])}")
            y[i, L.OBJECT_TO_INDEX[name]] += 1
    return y.clamp_(max=COUNTS - 1)


def read_count_dataset(root: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, 64, 64) and count targets (N, 24) of a folder written by `write_count_dataset`."""
    root = Path(root)
    path = root / COUNTS_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; render the checker's scenes with `lab6 train-checker --data {root}`")
    try:
        counts = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(counts, dict) or not counts:
        raise DataError(f"{path}: expected a non-empty mapping of image file to object names")
    names = list(counts)
    images = load_images([root / "images" / n for n in names], 64)            # (N, 64, 64, 3)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), count_targets(list(counts.values()))


# ---------------------------------------------------------------- training
@dataclass
class CheckerTrainConfig:
    """Options of `lab6 train-checker`."""
    epochs: int = 30
    batch_size: int = 128
    width: int = 32              # channels of the ResNet-18's first stage (64 = the evaluator's width)
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup: float = 0.05
    max_minutes: float = 0.0     # wall-clock budget; the LR schedule ends at it; 0 = none
    round_trip: float = 0.3      # the evaluator's label-preserving augmentations (lab6.evaluator_train.augment)
    round_trip_sizes: tuple[int, ...] = (24, 32, 32, 40, 48)
    blur: float = 0.1
    noise: float = 0.03
    light: float = 0.8           # fraction of images seen under another light (lab6.light.random_light)
    flip: bool = True
    val_images: int = 1024
    seed: int = 0
    init: str | None = None      # start from this checker's weights (fine-tuning) instead of from scratch

    def __post_init__(self):
        check_finite_fields(self, lambda name: f"CheckerTrainConfig.{name}")
        for name in ("epochs", "batch_size", "width"):
            if isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: must be >= 1")
        if self.lr <= 0 or self.max_minutes < 0:
            raise ConfigError(f"--lr {self.lr} / --max-minutes {self.max_minutes}: the LR must be > 0 and the "
                              f"budget >= 0 (0 = none)")


@torch.no_grad()
def _exact(model: ResNet18, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    hits = sum(int((model.logits(x[i:i + 512].float() / 127.5 - 1).view(-1, L.NUM_CLASSES, COUNTS).argmax(-1)
                    == y[i:i + 512]).all(1).sum()) for i in range(0, len(x), 512))
    model.train()
    return hits / max(1, len(x))


def train_checker(data: str | os.PathLike, out: str | os.PathLike | None = None,
                  config: CheckerTrainConfig | None = None, device: str | None = None) -> Path:
    """Train the count checker on a `write_count_dataset` folder; save `{'model': fp16 state_dict, ...}` to out."""
    cfg = config or CheckerTrainConfig()
    out = Path(out) if out is not None else Path(data) / "checker.pth"
    check_writable_dir(out.parent)
    dev = resolve_device(device)
    images, targets = read_count_dataset(data)
    torch.manual_seed(cfg.seed)
    order = torch.randperm(len(images))
    n_val = min(cfg.val_images, len(images) // 5)
    val, train = order[:n_val], order[n_val:]
    images, targets = images.to(dev), targets.to(dev)
    model = ResNet18(num_classes=L.NUM_CLASSES * COUNTS, width=cfg.width)
    if cfg.init:
        model.load_state_dict(CountChecker(cfg.init, device="cpu").model.state_dict())
    model = model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    total, budget = cfg.epochs * steps_per_epoch, cfg.max_minutes * 60 or float("inf")
    aug = _AugmentOptions(cfg)
    step, start, loss_avg = 0, time.monotonic(), None
    print(f"checker: {len(train)} training images, {n_val} held out, on {dev}", flush=True)
    while True:
        progress = max(step / total, (time.monotonic() - start) / budget)
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(progress, cfg.warmup)
        epoch, pos = divmod(step, steps_per_epoch)
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        idx = train[perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]].to(dev)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x = augment(images[idx].float() / 127.5 - 1.0, aug, gen)                  # (B, 3, 64, 64)
        logits = model.logits(x).view(-1, COUNTS)                                 # (B * 24, 4)
        loss = F.cross_entropy(logits, targets[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        if step % steps_per_epoch == 0:
            print(f"checker epoch {step // steps_per_epoch}: step {step}, loss {loss_avg:.4f}, held-out exact "
                  f"{_exact(model, images[val.to(dev)], targets[val.to(dev)]):.4f}, "
                  f"{(time.monotonic() - start) / 60:.1f} min", flush=True)
    acc = _exact(model, images[val.to(dev)], targets[val.to(dev)])
    ckpt = {"model": {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
            "arch": f"lab6.evaluator.ResNet18(num_classes={L.NUM_CLASSES * COUNTS}, width={cfg.width}): logits (B, 24, {COUNTS})",
            "counts": COUNTS, "width": cfg.width, "config": asdict(cfg), "steps": step, "train_seconds": time.monotonic() - start,
            "device": str(dev), "held_out_exact": acc, "train_images": len(train),
            "mirror_mean": cfg.flip}  # trained on mirrored scenes too: read each image and its mirror image
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    print(f"checker: saved {out} ({step} steps, {ckpt['train_seconds'] / 60:.1f} min, held-out exact {acc:.4f})", flush=True)
    return out


@dataclass
class _AugmentOptions:
    """The fields of EvaluatorTrainConfig that `augment` reads, from a CheckerTrainConfig."""
    flip: bool
    round_trip: float
    round_trip_sizes: tuple[int, ...]
    blur: float
    noise: float
    light: float

    def __init__(self, cfg: CheckerTrainConfig):
        self.flip, self.round_trip, self.round_trip_sizes = cfg.flip, cfg.round_trip, tuple(cfg.round_trip_sizes)
        self.blur, self.noise, self.light = cfg.blur, cfg.noise, cfg.light
