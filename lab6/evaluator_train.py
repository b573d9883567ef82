"""Training the course's ResNet-18 evaluator on renders in the course layout: augmentation, object pasting, and a
resumable, time-budgeted training loop that saves the course's checkpoint format (`lab6 train-evaluator`)."""
from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import check_finite_fields
from .data import CourseData, IclevrDataset, object_masks, training_fingerprint
from .devices import idle_cores, load_average, resolve_device
from .errors import ConfigError
from .evaluator import RESOLUTION, BasicBlock, ResNet18, course_accuracy, load_checkpoint, round_trip, widen_state_dict
from .io import atomic_path, check_writable_dir
from .light import gaussian_blur, random_light


@dataclass
class EvaluatorTrainConfig:
    """Options of `lab6 train-evaluator`: the course's ResNet-18 trained from scratch on a course-layout dataset."""

    epochs: int = 20                 # passes over the training images (the schedule ends at this or max_minutes)
    batch_size: int = 64
    optimizer: str = "adamw"         # "adamw", or "sgd" (Nesterov momentum 0.9)
    lr: float = 2e-3                 # peak learning rate
    weight_decay: float = 5e-4
    width: int = 0                   # channels of the first stage while training; < 64 is zero-padded to 64 at
                                     # the end (same outputs). 0 = 64 on a GPU, 32 on a CPU (~4x fewer operations)
    zero_init_residual: bool = True  # start each block's last BN scale at 0 (weights only; same forward)
    resolutions: tuple[tuple[float, int], ...] = ((1.0, 64),)  # (until progress, px): optional low-res first
    warmup: float = 0.1              # fraction of the schedule spent warming the learning rate up
    max_minutes: float = 9.0         # wall-clock budget of the training loop; 0 = no limit
    paste: float = 0.5               # fraction of images given one more object, cut (with its shadow) from a
                                     # one-object image: shows every pair of objects, breaking co-occurrence cues
    round_trip: float = 0.3          # fraction of images sent through a 64 -> s -> 64 bilinear round trip
    round_trip_sizes: tuple[int, ...] = (24, 32, 32, 40, 48)  # s, drawn per batch
    blur: float = 0.1                # fraction of images blurred with a Gaussian, sigma in [0.4, 1.2]
    noise: float = 0.03              # largest std of the Gaussian noise added to every image
    light: float = 0.8               # fraction of images seen under another light (lab6.light.random_light)
    flip: bool = True                # random horizontal flips (labels carry no left/right)
    val_images: int = 512            # training images held out to report accuracy
    threads: int = 0                 # CPU threads (0 = the cores not busy with other work, at least 1)
    channels_last: bool = False
    save_every_minutes: float = 2.0  # how often the resumable state is written
    seed: int = 0
    init: str | None = None          # start from this evaluator's weights (fine-tuning; width 64) instead of scratch

    def __post_init__(self):
        self.round_trip_sizes = tuple(int(s) for s in self.round_trip_sizes)
        self.resolutions = tuple((float(u), int(r)) for u, r in self.resolutions)
        check_finite_fields(self, lambda name: f"EvaluatorTrainConfig.{name}")
        if not self.resolutions or self.resolutions[-1][0] < 1 or any(r < 16 for _, r in self.resolutions):
            raise ConfigError(f"EvaluatorTrainConfig.resolutions: expected (until, px) pairs with px >= 16, "
                              f"the last until = 1.0, got {self.resolutions}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"EvaluatorTrainConfig.optimizer: expected 'adamw' or 'sgd', got {self.optimizer!r}")
        if not 0 <= self.width <= 64:
            raise ConfigError(f"EvaluatorTrainConfig.width: must be in 1..64 (64 = the course's width) or 0 (auto), "
                              f"got {self.width}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EvaluatorTrainConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if self.init is not None and self.width not in (0, 64):
            raise ConfigError(f"EvaluatorTrainConfig.width: fine-tuning from --init {self.init} trains the saved "
                              f"width 64, got {self.width}")
        for name in ("round_trip", "blur", "warmup", "paste", "light"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"EvaluatorTrainConfig.{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"EvaluatorTrainConfig.lr: must be > 0, got {self.lr}")
        for name in ("max_minutes", "noise"):
            if getattr(self, name) < 0:
                raise ConfigError(f"EvaluatorTrainConfig.{name}: must be >= 0, got {getattr(self, name)}")


def paste_objects(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, donors: torch.Tensor,
                  donor_images: torch.Tensor, donor_labels: torch.Tensor, donor_masks: torch.Tensor, p: float,
                  gen: torch.Generator, tries: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste onto a fraction p of images x (B, 3, H, W) one object of another picture, where it hides nothing.

    For each chosen image, up to `tries` random donors (one-object images) are checked: the donor's object must
    be new to the image and its mask must overlap the image's objects by under 10%. Labels y (B, 24) gain it.
    """
    b = x.shape[0]
    chosen = torch.rand(b, generator=gen) < p
    cand = donors[torch.randint(len(donors), (b, tries), generator=gen)]          # (B, T) donor indices
    dm = donor_masks[cand].to(x.device)                                            # (B, T, H, W)
    dy = donor_labels[cand].to(x.device)                                           # (B, T, 24)
    new = (dy * y[:, None]).sum(-1) == 0                                           # (B, T)
    overlap = (dm & masks[:, None]).flatten(2).sum(-1) < 0.1 * dm.flatten(2).sum(-1)
    ok = new & overlap                                                             # (B, T)
    first = ok.float().argmax(1)                                                   # (B,)
    use = chosen.to(x.device) & ok.any(1)
    if not use.any():
        return x, y
    rows = torch.arange(b, device=x.device)
    pick = cand.to(x.device)[rows, first]                                          # (B,)
    m = dm[rows, first][:, None] & use[:, None, None, None]                        # (B, 1, H, W)
    donor = donor_images[pick.cpu()].to(x.device).float() / 127.5 - 1.0           # (B, 3, H, W)
    x = torch.where(m, donor, x)
    y = torch.where(use[:, None], torch.maximum(y, dy[rows, first]), y)
    return x, y


def augment(x: torch.Tensor, cfg: EvaluatorTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Label-preserving augmentation of x (B, 3, R, R): flips, changes of light, resolution round trips, blur, noise."""
    b = x.shape[0]
    x = x.clone()

    def pick(p: float) -> torch.Tensor:
        return torch.nonzero(torch.rand(b, generator=gen) < p).flatten().to(x.device)

    if cfg.flip:
        i = pick(0.5)
        x[i] = x[i].flip(3)
    if cfg.light > 0:
        i = pick(cfg.light)
        if len(i):
            x[i] = random_light(x[i], gen)
    if cfg.round_trip > 0:
        size = cfg.round_trip_sizes[int(torch.randint(len(cfg.round_trip_sizes), (1,), generator=gen))]
        size = max(8, size * x.shape[-1] // RESOLUTION)  # the same relative blur at a lower training resolution
        i = pick(cfg.round_trip)
        if len(i):
            x[i] = round_trip(x[i], size)
    if cfg.blur > 0:
        i = pick(cfg.blur)
        if len(i):
            x[i] = gaussian_blur(x[i], (0.4 + 0.8 * torch.rand(len(i), generator=gen)).to(x))
    if cfg.noise > 0:
        std = (cfg.noise * torch.rand(b, 1, 1, 1, generator=gen)).to(x)
        x.add_(torch.randn(x.shape, generator=gen).to(x).mul_(std))
    return x


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to zero, as a function of progress in [0, 1]."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))))


def _config_dict(cfg: EvaluatorTrainConfig) -> dict:
    d = asdict(cfg)
    d["round_trip_sizes"] = list(cfg.round_trip_sizes)
    d["resolutions"] = [list(p) for p in cfg.resolutions]
    return d


def _same_run(saved: dict | None, cfg_dict: dict) -> bool:
    """Whether a saved config trains the same network as cfg_dict (threads and save cadence aside)."""
    ignore = {"threads", "save_every_minutes"}
    return isinstance(saved, dict) and {k: v for k, v in saved.items() if k not in ignore} == \
        {k: v for k, v in cfg_dict.items() if k not in ignore}


def _try_load(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None


@torch.no_grad()
def _held_out_accuracy(model: ResNet18, x: torch.Tensor, y: torch.Tensor, rt: bool = False) -> float:
    model.eval()
    out = []
    for i in range(0, x.shape[0], 256):
        xb = x[i:i + 256].float() / 127.5 - 1.0  # (b, 3, 64, 64)
        out.append(model(round_trip(xb) if rt else xb).float().cpu())
    model.train()
    return course_accuracy(torch.cat(out), y.cpu()) if out else float("nan")


def train_evaluator(data: str | os.PathLike, out: str | os.PathLike | None = None,
                    config: EvaluatorTrainConfig | None = None, *, seed: int | None = None,
                    device: str | torch.device | None = None, force: bool = False, progress: bool = True,
                    also: Sequence[str | os.PathLike] = ()) -> Path:
    """Train the course's ResNet-18 on `data` (course layout; the training images of the roots in `also` join
    them) and save `{'model': state_dict, ...}` to `out`.

    Resumable: the state is written atomically to `<out>.partial` every few minutes and on interruption, and a
    later call with the same config and data continues from it. A complete checkpoint for the same config and data
    (train.json and every image's size and modification time) is kept as is unless `force`.
    """
    cfg = EvaluatorTrainConfig(**_config_dict(config)) if config is not None else EvaluatorTrainConfig()
    if seed is not None:
        cfg.seed = seed
    root = Path(data)
    out = Path(out) if out is not None else root / "evaluator.pth"
    partial = out.with_name(out.name + ".partial")
    dev = resolve_device(device)
    if cfg.width == 0:  # auto: the full network on a GPU, a narrow one (~4x fewer operations) on a CPU
        cfg.width = 64 if dev.type == "cuda" or cfg.init else 32
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; --out takes the checkpoint's file path, e.g. {out / 'evaluator.pth'}")
    check_writable_dir(out.parent)  # before training, not after it
    courses = [CourseData(root)] + [CourseData(a) for a in also]
    key, cfg_dict = _fingerprint(courses), _config_dict(cfg)  # train.json and each image's size and mtime

    if not force and out.is_file():
        done = _try_load(out)
        if done and done.get("complete") and done.get("data_key") == key and _same_run(done.get("config"), cfg_dict):
            print(f"evaluator: {out} is up to date (same config and data; force=True / --force retrains)")
            return out
    if force and partial.exists():
        partial.unlink()
    ds = _Joined([IclevrDataset(c.root, RESOLUTION, progress=progress) for c in courses])

    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(cfg.threads or idle_cores())
    try:
        return _train(cfg, ds, out, partial, dev, key, cfg_dict, progress)
    finally:
        torch.set_num_threads(threads)


def _fingerprint(courses: list[CourseData]) -> str:
    """One root's training fingerprint, or a hash over several roots' in order."""
    keys = [training_fingerprint(c) for c in courses]
    return keys[0] if len(keys) == 1 else hashlib.sha256("\0".join(keys).encode()).hexdigest()


class _Joined:
    """The training images (N, 3, 64, 64) uint8 and labels (N, 24) of one or more datasets, in order."""

    def __init__(self, datasets: list):
        self.root = ", ".join(str(d.root) for d in datasets)
        self.images = torch.cat([d.images for d in datasets]) if len(datasets) > 1 else datasets[0].images
        self.labels = torch.cat([d.labels for d in datasets]) if len(datasets) > 1 else datasets[0].labels

    def __len__(self) -> int:
        return len(self.images)


class _Batches:
    """The images on the device, split into training and held-out ones, and the batch of each step: shuffled per
    epoch, given a pasted object (`paste_objects`), resized to the step's resolution and augmented."""

    def __init__(self, cfg: EvaluatorTrainConfig, ds, dev: torch.device):
        self.cfg, self.ds, self.dev = cfg, ds, dev
        n_val = min(cfg.val_images, len(ds) // 5)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(cfg.seed))
        self.val_idx, self.train_idx = order[:n_val], order[n_val:]
        self.images = ds.images.to(dev)                                 # (N, 3, 64, 64) uint8
        self.labels = ds.labels.to(dev)                                 # (N, 24)
        self.steps_per_epoch = max(1, len(self.train_idx) // cfg.batch_size)  # drop the last partial batch (BN)
        self.masks, self.donors = None, torch.zeros(0, dtype=torch.long)
        if cfg.paste > 0:
            self.masks = object_masks(ds.images).to(dev)                # (N, 64, 64) bool
            area = self.masks.flatten(1).sum(1).cpu()
            one = (ds.labels.sum(1) == 1) & (area >= 16) & (area <= 0.25 * self.masks[0].numel())
            one[self.val_idx] = False
            self.donors = torch.nonzero(one).flatten()                  # one-object training images, sane mask
            if len(self.donors) == 0:
                print("evaluator: no one-object images to paste from; training without pasting", file=sys.stderr)

    def batch(self, step: int, res: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, res, res) in [-1, 1] and multi-hot labels (B, 24) of training step `step`."""
        cfg, dev = self.cfg, self.dev
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(len(self.train_idx), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        idx = self.train_idx[perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]].to(dev)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x0, y0 = self.images[idx].float() / 127.5 - 1.0, self.labels[idx]   # (B, 3, 64, 64), (B, 24)
        if cfg.paste > 0 and len(self.donors):
            x0, y0 = paste_objects(x0, y0, self.masks[idx], self.donors, self.ds.images, self.ds.labels, self.masks,
                                   cfg.paste, gen)
        if res != RESOLUTION:
            x0 = F.interpolate(x0, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
        return augment(x0, cfg, gen), y0                                   # (B, 3, res, res)

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out images (n, 3, 64, 64) uint8 and labels (n, 24)."""
        return self.images[self.val_idx.to(self.dev)], self.labels[self.val_idx.to(self.dev)]


def _build_model(cfg: EvaluatorTrainConfig, dev: torch.device) -> tuple[ResNet18, torch.optim.Optimizer]:
    """A ResNet-18 of the config's width, freshly initialised or loaded from `cfg.init`, and its optimiser."""
    torch.manual_seed(cfg.seed)
    model = ResNet18(width=cfg.width)
    if cfg.init:
        state = load_checkpoint(cfg.init)["model"]  # checked against the course's keys and shapes
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    elif cfg.zero_init_residual:
        for m in model.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
    model = model.to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, opt


def _resume(partial: Path, model: ResNet18, opt: torch.optim.Optimizer, cfg_dict: dict, key: str) -> tuple[int, float]:
    """Load the state of an interrupted run of the same config and data into model and opt: (step, seconds done)."""
    state = _try_load(partial) if partial.exists() else None
    if state and _same_run(state.get("config"), cfg_dict) and state.get("data_key") == key:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"evaluator: resuming {partial} at step {step} ({elapsed / 60:.1f} min done)")
        return step, elapsed
    if partial.exists():
        print(f"evaluator: ignoring {partial} (another config or dataset)")
    return 0, 0.0


def _train(cfg: EvaluatorTrainConfig, ds, out: Path, partial: Path, dev: torch.device, key: str, cfg_dict: dict,
           progress: bool) -> Path:
    """The training loop of `train_evaluator` (see there)."""
    data = _Batches(cfg, ds, dev)
    steps_per_epoch = data.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    budget = cfg.max_minutes * 60 or float("inf")
    model, opt = _build_model(cfg, dev)
    step, elapsed = _resume(partial, model, opt, cfg_dict, key)

    def save_partial() -> None:
        with atomic_path(partial) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "elapsed": elapsed, "config": cfg_dict, "data_key": key}, tmp)

    model.train()
    load_start = load_average()
    bar = tqdm(total=100, desc="train evaluator", unit="%", disable=not progress, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.1f}/100% [{elapsed}<{remaining}{postfix}]")
    loss_avg, start, last_save = None, time.monotonic() - elapsed, time.monotonic()
    try:
        while True:
            elapsed = time.monotonic() - start
            progress_frac = max(step / total_steps, elapsed / budget)
            if progress_frac >= 1:
                break
            res = next(r for until, r in cfg.resolutions if progress_frac < until or until >= 1)
            lr = cfg.lr * lr_factor(max((step + 1) / total_steps, elapsed / budget), cfg.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            x0, y0 = data.batch(step, res)                             # (B, 3, res, res), (B, 24)
            if cfg.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            loss = F.binary_cross_entropy_with_logits(model.logits(x0), y0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_value = loss.item()
            loss_avg = loss_value if loss_avg is None else 0.95 * loss_avg + 0.05 * loss_value
            bar.update(100 * progress_frac - bar.n)  # the schedule's progress: steps or time, whichever is further
            bar.set_postfix(step=step, loss=f"{loss_avg:.4f}", lr=f"{lr:.2e}", px=res, refresh=False)
            if step % steps_per_epoch == 0 and len(data.val_idx):
                acc = _held_out_accuracy(model, *data.held_out())
                bar.write(f"epoch {step // steps_per_epoch}: loss {loss_avg:.4f}, held-out accuracy {acc:.4f}")
            if time.monotonic() - last_save > cfg.save_every_minutes * 60:
                elapsed = time.monotonic() - start
                save_partial()
                last_save = time.monotonic()
    except KeyboardInterrupt:
        elapsed = time.monotonic() - start
        save_partial()
        bar.close()
        print(f"evaluator: interrupted; state saved to {partial}, run again to resume", file=sys.stderr)
        raise
    bar.close()
    elapsed = time.monotonic() - start

    x_val, y_val = data.held_out()
    acc = _held_out_accuracy(model, x_val, y_val) if len(x_val) else float("nan")
    acc_rt = _held_out_accuracy(model, x_val, y_val, rt=True) if len(x_val) else float("nan")
    model = model.to(memory_format=torch.contiguous_format)
    ckpt = {"model": {k: v.contiguous() for k, v in widen_state_dict(model.state_dict()).items()},
            "complete": True, "train_width": cfg.width, "config": cfg_dict, "data": str(ds.root), "data_key": key,
            "steps": step, "epochs_done": step / steps_per_epoch, "train_seconds": elapsed, "device": str(dev),
            "held_out_accuracy": acc, "held_out_accuracy_round_trip": acc_rt,
            "load_avg_start": load_start, "load_avg_end": load_average(), "torch_threads": torch.get_num_threads(),
            "arch": "torchvision resnet18, fc = Sequential(Linear(512, 24), Sigmoid())"}
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    if partial.exists():
        partial.unlink()
    print(f"evaluator: saved {out} (width {cfg.width}, {step} steps, {step / steps_per_epoch:.2f} epochs, "
          f"{elapsed / 60:.1f} min; "
          f"held-out accuracy {acc:.4f}, after a 64->32->64 round trip {acc_rt:.4f})")
    return out
