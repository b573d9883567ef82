"""The course's judge: a multi-label ResNet-18, its pooled top-k accuracy, and training one on our renders.

The course scores generated images with torchvision's `resnet18` whose `fc` is `Sequential(Linear(512, 24),
Sigmoid())`, loaded from `checkpoint.pth` (`torch.load(path)['model']`). `ResNet18` below rebuilds that network
without torchvision: same module names, so the course's state_dict loads unchanged, and the same forward.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import labels as L
from .devices import resolve_device
from .errors import CheckpointError, ConfigError, DataError, LabelError
from .errors import first_line as _first_line
from .io import atomic_path, check_writable_dir

RESOLUTION = 64  # the course evaluator's input side
COURSE_CHECKPOINT = Path("data") / "iclevr" / "checkpoint.pth"
SYNTH_CHECKPOINT = Path("data") / "synth" / "evaluator.pth"
SHIPPED_EVALUATOR = Path(__file__).resolve().parents[1] / "pretrained" / "evaluator" / "checkpoint.pth"
HOW_TO_GET = ("put the course's checkpoint.pth in data/iclevr/, or train one on the synthetic data with "
              "`lab6 train-evaluator --data data/synth`")

# Kinds of miss in `Evaluator.breakdown`: what the evaluator saw instead of a wanted object.
WRONG_SHAPE = "wrong shape"    # an object of the right colour but another shape
WRONG_COLOUR = "wrong colour"  # an object of the right shape but another colour
MISSING = "missing"            # nothing related: the top-k slot went to an unrelated object
MISS_KINDS = (WRONG_SHAPE, WRONG_COLOUR, MISSING)
UNREQUESTED_THRESHOLD = 0.5   # an object the evaluator sees with p above this, and no label asked for, is unrequested


# ---------------------------------------------------------------- model
class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 conv-BN pairs and a residual path."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, C, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))                         # (B, C, H/s, W/s)
        out = self.bn2(self.conv2(out))                                  # (B, C, H/s, W/s)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's `resnet18` with `fc = Sequential(Linear(512, 24), Sigmoid())`: outputs probabilities.

    `width` < 64 builds the same network with fewer channels (width, 2, 4, 8 x width), for fast training;
    `widen_state_dict` embeds it into the course's width-64 layout without changing its outputs.
    """

    def __init__(self, num_classes: int = L.NUM_CLASSES, width: int = 64):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w))
        self.layer4 = nn.Sequential(BasicBlock(4 * w, 8 * w, 2), BasicBlock(8 * w, 8 * w))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Sequential(nn.Linear(8 * w, num_classes), nn.Sigmoid())
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores (B, 24) of images x (B, 3, H, W)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer2(self.layer1(x))                        # (B, 128, H/8, W/8)
        x = self.layer4(self.layer3(x))                        # (B, 512, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)                  # (B, 512)
        return self.fc[0](x)                                   # (B, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc[1](self.logits(x))  # (B, 24) probabilities, as torchvision's model with the course's fc


def widen_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero-pad a narrow ResNet18's state_dict into the course's width-64 layout; the outputs stay the same.

    Extra channels get zero conv weights and a zero batch-norm scale and shift, so they stay exactly 0 through
    every block (residual sums included) and add nothing to the pooled features or the fc layer.
    """
    out = {}
    for key, shape in expected_shapes().items():
        v = state[key].detach().cpu()
        if tuple(v.shape) == shape:
            out[key] = v.clone()
            continue
        if key.endswith("running_var"):
            full = torch.ones(shape, dtype=v.dtype)
        else:
            full = torch.zeros(shape, dtype=v.dtype)
        full[tuple(slice(0, n) for n in v.shape)] = v
        out[key] = full
    return out


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """The course checkpoint's state_dict keys and tensor shapes, in torchvision's order."""
    with torch.device("meta"):
        model = ResNet18()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- checkpoints
def is_default_synth(root: str | os.PathLike) -> bool:
    """Whether `root` holds synthetic data of the default renderer (its .synth.json says so): the shipped
    evaluator's kind of scene."""
    from .synth import RENDER_VERSION, SynthConfig
    try:
        state = json.loads((Path(root) / ".synth.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("renderer") == RENDER_VERSION \
        and state.get("config") == asdict(SynthConfig())


def find_evaluator(path: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None) -> Path:
    """The evaluator checkpoint to use: `path`; else in the data root (default data/iclevr if it has the
    course's checkpoint, else data/synth) its checkpoint.pth (the course's), its evaluator.pth (what
    `lab6 train-evaluator` writes), else the shipped one when the root holds default synthetic renders."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: evaluator checkpoint not found; {HOW_TO_GET}")
        return path
    if data_root is None:
        if COURSE_CHECKPOINT.is_file():
            return COURSE_CHECKPOINT
        data_root = SYNTH_CHECKPOINT.parent
    root = Path(data_root)
    candidates = (root / COURSE_CHECKPOINT.name, root / SYNTH_CHECKPOINT.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if is_default_synth(root) and SHIPPED_EVALUATOR.is_file():
        return SHIPPED_EVALUATOR
    raise CheckpointError(f"no evaluator for {root}: no {candidates[0].name} (the course's) or {candidates[1].name} "
                          f"there, and it holds no default synthetic renders for the shipped one; train one with "
                          f"`lab6 train-evaluator --data {root}`")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """torch.load an evaluator checkpoint and check it is `{'model': course ResNet-18 state_dict, ...}`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: evaluator checkpoint not found; {HOW_TO_GET}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(e)})") from None
        # Older course files may pickle Python objects besides the tensors; they need the full unpickler.
        warnings.warn(f"{path}: holds Python objects besides tensors; loading it with weights_only=False "
                      f"(only do this with files you trust)", stacklevel=2)
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e2:
            raise CheckpointError(f"{path}: cannot be loaded ({_first_line(e2)})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or another format "
                              f"({_first_line(e)})") from None
    if not isinstance(ckpt, Mapping) or "model" not in ckpt:
        if isinstance(ckpt, Mapping) and "conv1.weight" in ckpt:
            raise CheckpointError(f"{path}: a bare state_dict without the 'model' key; the course format is "
                                  f"torch.save({{'model': model.state_dict()}}, path)")
        keys = ", ".join(map(repr, list(ckpt)[:5])) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(f"{path}: no 'model' key (found {keys or 'nothing'}); expected the course format "
                              f"{{'model': resnet18 state_dict, ...}}")
    ckpt = dict(ckpt)
    ckpt["model"] = check_state_dict(ckpt["model"], str(path))
    return ckpt


def check_state_dict(state: object, where: str = "state_dict") -> dict[str, torch.Tensor]:
    """Check a state_dict against the course's ResNet-18 keys and shapes; return it ready for load_state_dict."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: 'model' is a {type(state).__name__}, expected a ResNet-18 state_dict")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = expected_shapes()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
             if k in state and (not torch.is_tensor(state[k]) or tuple(state[k].shape) != expected[k])]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"wrong shapes: {', '.join(wrong[:3])}")
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{where}: not the course's ResNet-18 with fc = Linear(512, 24) + Sigmoid: "
                              + "; ".join(parts))
    for k in expected:  # checkpoints from before torchvision 0.4.1 have no num_batches_tracked
        state.setdefault(k, torch.tensor(0, dtype=torch.long))
    return {k: state[k] for k in expected}


# ---------------------------------------------------------------- the course metric
def course_hits(out: torch.Tensor, onehot_labels: torch.Tensor) -> tuple[int, int]:
    """(hits, labels) of the course's pooled top-k accuracy, k = objects per image; same topk, same ties."""
    out, onehot_labels = out.detach().cpu(), onehot_labels.detach().cpu()
    hits = total = 0
    for i in range(out.size(0)):
        k = int(onehot_labels[i].sum().item())
        total += k
        outi = out[i].topk(k).indices
        li = onehot_labels[i].topk(k).indices
        hits += int(torch.isin(outi, li).sum())  # the course's `for j in outi: if j in li`
    return hits, total


def unrequested_counts(out: torch.Tensor, onehot_labels: torch.Tensor,
                       threshold: float = UNREQUESTED_THRESHOLD) -> torch.Tensor:
    """Objects per image (B,) that the evaluator sees (p > threshold) and no label asked for.

    The course's top-k accuracy is blind to them: an image that draws its k objects and a few more scores 1.
    """
    return unrequested_mask(out, onehot_labels, threshold).sum(1)  # (B,)


def unrequested_mask(out: torch.Tensor, onehot_labels: torch.Tensor,
                     threshold: float = UNREQUESTED_THRESHOLD) -> torch.Tensor:
    """bool (B, 24): the objects each image shows (p > threshold) that its labels did not ask for."""
    return (out.detach().cpu() > threshold) & (onehot_labels.detach().cpu() == 0)


def course_accuracy(out: torch.Tensor, onehot_labels: torch.Tensor) -> float:
    """The course's `compute_acc`: hits / labels over the whole set."""
    hits, total = course_hits(out, onehot_labels)
    return hits / total


@dataclass
class Miss:
    """A wanted object that is not among the evaluator's top k, and what took its place."""

    object: str
    kind: str              # WRONG_SHAPE, WRONG_COLOUR or MISSING
    seen: str | None       # the unwanted top-k object paired with it
    prob: float            # the evaluator's probability of the wanted object


@dataclass
class ImageResult:
    """One image's verdict: its labels, the top-k objects seen, hits and misses."""

    index: int
    labels: list[str]
    predicted: list[str]   # top-k objects, most probable first
    hits: int
    misses: list[Miss] = field(default_factory=list)
    unrequested: list[str] = field(default_factory=list)  # seen (p > 0.5) but not asked for, most probable first


def breakdown_from_probs(out: torch.Tensor, onehot_labels: torch.Tensor) -> list[ImageResult]:
    """Per-image verdicts: each missed object paired with an unwanted top-k object, related ones first."""
    out, onehot_labels = out.detach().cpu(), onehot_labels.detach().cpu()
    extra = unrequested_mask(out, onehot_labels)  # (B, 24)
    results = []
    for i in range(out.size(0)):
        k = int(onehot_labels[i].sum().item())
        wanted = onehot_labels[i].topk(k).indices.tolist()
        top = out[i].topk(k).indices.tolist()
        missed = [j for j in wanted if j not in top]
        extras = [j for j in top if j not in wanted]  # as many as `missed`, most probable first
        pairs: dict[int, tuple[str, int | None]] = {}
        for kind, related in ((WRONG_SHAPE, lambda a, b: L.color_of(a) == L.color_of(b)),
                              (WRONG_COLOUR, lambda a, b: L.shape_of(a) == L.shape_of(b))):
            for j in missed:
                if j in pairs:
                    continue
                match = next((e for e in extras if related(j, e)), None)
                if match is not None:
                    pairs[j] = (kind, match)
                    extras.remove(match)
        for j in missed:
            if j not in pairs:
                pairs[j] = (MISSING, extras.pop(0) if extras else None)
        misses = [Miss(L.OBJECTS[j], pairs[j][0], None if pairs[j][1] is None else L.OBJECTS[pairs[j][1]],
                       float(out[i, j])) for j in missed]
        seen = [j for j in out[i].argsort(descending=True).tolist() if extra[i, j]]
        results.append(ImageResult(i, [L.OBJECTS[j] for j in wanted], [L.OBJECTS[j] for j in top],
                                   k - len(missed), misses, [L.OBJECTS[j] for j in seen]))
    return results


def summarize(results: Sequence[ImageResult]) -> dict[str, int]:
    """Counts over many verdicts: labels, hits, each kind of miss, and images showing an unrequested object."""
    counts = {"labels": 0, "hits": 0, **{kind: 0 for kind in MISS_KINDS}, "images": 0, "with unrequested": 0}
    for r in results:
        counts["labels"] += len(r.labels)
        counts["hits"] += r.hits
        for m in r.misses:
            counts[m.kind] += 1
        counts["images"] += 1
        counts["with unrequested"] += bool(r.unrequested)
    return counts


# ---------------------------------------------------------------- the evaluator
def round_trip(x: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Images (B, 3, R, R) down to size x size (antialiased) and back up with bilinear: what a low-res sample looks like."""
    r = x.shape[-1]
    low = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)  # (B, 3, s, s)
    return F.interpolate(low, size=(r, r), mode="bilinear", align_corners=False)                     # (B, 3, R, R)


class Evaluator:
    """The course's evaluator: ResNet-18 scoring images (B, 3, 64, 64) in [-1, 1] against label sets."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 batch_size: int = 256):
        self.path = find_evaluator(path)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        ckpt = load_checkpoint(self.path, map_location=self.device)
        self.model = ResNet18().to(self.device)
        self.model.load_state_dict(ckpt.pop("model"))
        self.model.eval()
        self.info = ckpt  # the checkpoint's other entries (our trainer stores its config and figures)

    def __repr__(self) -> str:
        return f"Evaluator({str(self.path)!r}, device={str(self.device)!r})"

    def _prepare(self, images) -> torch.Tensor:
        """Images as float (B, 3, 64, 64): uint8 is scaled to [-1, 1], other sizes resized with a warning."""
        x = torch.as_tensor(images)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise DataError(f"evaluator: expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        x = x.float()
        if tuple(x.shape[-2:]) != (RESOLUTION, RESOLUTION):
            warnings.warn(f"evaluator: images are {x.shape[-2]}x{x.shape[-1]}, resizing to {RESOLUTION}x{RESOLUTION} "
                          f"(bilinear) as the course evaluator expects", stacklevel=3)
            down = x.shape[-1] > RESOLUTION or x.shape[-2] > RESOLUTION
            x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False, antialias=down)
        bad = ~torch.isfinite(x).flatten(1).all(dim=1)  # (B,)
        if bad.any():  # top-k of NaN scores would count arbitrary hits
            raise DataError(f"evaluator: {int(bad.sum())} of {x.shape[0]} images hold NaN or inf values (first: image "
                            f"{int(bad.nonzero()[0])}); a model whose training diverged draws these")
        if x.numel() and (x.min() < -1.5 or x.max() > 1.5):
            warnings.warn(f"evaluator: image values span [{x.min():.2f}, {x.max():.2f}]; the evaluator expects [-1, 1] "
                          f"(convert uint8 images with lab6.data.from_uint8)", stacklevel=3)
        return x

    def _onehot(self, labels, n: int) -> torch.Tensor:
        """Multi-hot (n, 24) from a (n, 24) tensor or a list of label sets."""
        if torch.is_tensor(labels):
            y = labels.detach().float().cpu()
        else:
            y = L.encode_batch(labels, "labels", max_objects=L.NUM_CLASSES)
        if y.dim() != 2 or y.shape[1] != L.NUM_CLASSES:
            raise LabelError(f"evaluator: expected multi-hot labels of shape (B, {L.NUM_CLASSES}), got {tuple(y.shape)}")
        if y.shape[0] != n:
            raise LabelError(f"evaluator: {n} images but {y.shape[0]} label sets; give one label set per image")
        return y

    @torch.no_grad()
    def probs(self, images) -> torch.Tensor:
        """Probabilities (B, 24) on the CPU for images (B, 3, 64, 64) in [-1, 1]."""
        x = self._prepare(images)
        out = [self.model(x[i:i + self.batch_size].to(self.device)).float().cpu()  # (b, 24)
               for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, L.NUM_CLASSES)

    def score(self, images, labels) -> tuple[int, int]:
        """(hits, labels) of the course's pooled top-k metric."""
        out = self.probs(images)
        return course_hits(out, self._onehot(labels, out.shape[0]))

    def scores(self, images, labels) -> dict:
        """{accuracy, hits, labels} of the course metric, and `unrequested`: the share of images showing an
        object (p > 0.5) that no label asked for, which the top-k metric does not see."""
        out = self.probs(images)
        y = self._onehot(labels, out.shape[0])
        hits, total = course_hits(out, y)
        extra = unrequested_counts(out, y)  # (B,)
        return {"accuracy": hits / total, "hits": hits, "labels": total,
                "unrequested": float((extra > 0).float().mean()) if len(extra) else 0.0}

    def accuracy(self, images, labels) -> float:
        """The course's pooled top-k accuracy: hits / labels over all images."""
        hits, total = self.score(images, labels)
        return hits / total

    def breakdown(self, images, labels) -> list[ImageResult]:
        """Per-image verdicts: which objects were missed and what was seen instead."""
        out = self.probs(images)
        return breakdown_from_probs(out, self._onehot(labels, out.shape[0]))


def main_evaluate(args) -> int:
    """`lab6 evaluate`: score DIR/0.png..{n-1}.png against a label file and print the course accuracy."""
    from PIL import Image

    from .data import load_image_folder, read_label_file
    label_sets = read_label_file(args.labels)
    evaluator = Evaluator(getattr(args, "evaluator", None), device=getattr(args, "device", None))
    first = Path(args.images) / "0.png"
    resolution = RESOLUTION
    if first.is_file():
        try:
            with Image.open(first) as im:
                if im.size[0] == im.size[1]:
                    resolution = im.size[0]  # read as is; the evaluator resizes (and says so)
        except OSError:
            pass  # load_image_folder names the unreadable file
    images = load_image_folder(args.images, len(label_sets), resolution)
    counts = summarize(evaluator.breakdown(images, label_sets))
    hits, total = counts["hits"], counts["labels"]
    print(f"accuracy: {hits / total:.4f} ({hits}/{total})")
    print("misses: " + ", ".join(f"{kind} {counts[kind]}" for kind in MISS_KINDS) + f"  [evaluator: {evaluator.path}]")
    print(f"images showing an object no label asked for: {counts['with unrequested']} of {counts['images']}")
    return 0


# ---------------------------------------------------------------- training
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
    flip: bool = True                # random horizontal flips (labels carry no left/right)
    val_images: int = 512            # training images held out to report accuracy
    threads: int = 0                 # CPU threads (0 = the cores not busy with other work, at least 1)
    channels_last: bool = False
    save_every_minutes: float = 2.0  # how often the resumable state is written
    seed: int = 0

    def __post_init__(self):
        self.round_trip_sizes = tuple(int(s) for s in self.round_trip_sizes)
        self.resolutions = tuple((float(u), int(r)) for u, r in self.resolutions)
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
        for name in ("round_trip", "blur", "warmup", "paste"):
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


def _cpu_busy(seconds: float = 0.5) -> float | None:
    """Cores busy right now (from two reads of /proc/stat `seconds` apart); None where there is no /proc/stat."""
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return sum(ticks), idle
    try:
        total0, idle0 = read()
        time.sleep(seconds)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    cores = os.cpu_count() or 1
    return cores * (1 - (idle1 - idle0) / (total1 - total0))


def idle_cores() -> int:
    """Cores not busy with other work right now, at least 1.

    On a shared CPU, torch threads that outnumber the free cores wait on each other: with another busy
    process on this 2-core machine, 2 threads ran a training step 12x slower than 1 thread. Busy-ness is
    sampled over half a second from /proc/stat, not taken from the 1-minute load average, which still
    counts work that has just finished (the data render before `make run` trains the evaluator).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = _cpu_busy()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (OSError, AttributeError):
            busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of x (B, 3, H, W) with its own Gaussian sigma (B,), 5x5 separable kernel."""
    r = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    k = torch.exp(-r[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)                                   # (B, 5)
    b, c, h, w = x.shape
    y = F.pad(x.reshape(1, b * c, h, w), (2, 2, 2, 2), mode="replicate")
    kc = k.repeat_interleave(c, 0)                                   # (B*3, 5)
    y = F.conv2d(y, kc[:, None, None, :], groups=b * c)              # (1, B*3, H+4, W)
    y = F.conv2d(y, kc[:, None, :, None], groups=b * c)              # (1, B*3, H, W)
    return y.reshape(b, c, h, w)


def augment(x: torch.Tensor, cfg: EvaluatorTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Label-preserving augmentation of x (B, 3, R, R): flips, resolution round trips, blur, noise."""
    b = x.shape[0]
    x = x.clone()

    def pick(p: float) -> torch.Tensor:
        return torch.nonzero(torch.rand(b, generator=gen) < p).flatten().to(x.device)

    if cfg.flip:
        i = pick(0.5)
        x[i] = x[i].flip(3)
    if cfg.round_trip > 0:
        size = cfg.round_trip_sizes[int(torch.randint(len(cfg.round_trip_sizes), (1,), generator=gen))]
        size = max(8, size * x.shape[-1] // RESOLUTION)  # the same relative blur at a lower training resolution
        i = pick(cfg.round_trip)
        if len(i):
            x[i] = round_trip(x[i], size)
    if cfg.blur > 0:
        i = pick(cfg.blur)
        if len(i):
            x[i] = _gaussian_blur(x[i], (0.4 + 0.8 * torch.rand(len(i), generator=gen)).to(x))
    if cfg.noise > 0:
        std = (cfg.noise * torch.rand(b, 1, 1, 1, generator=gen)).to(x)
        x.add_(torch.randn(x.shape, generator=gen).to(x).mul_(std))
    return x


def _lr_factor(progress: float, warmup: float) -> float:
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
                    device: str | torch.device | None = None, force: bool = False, progress: bool = True) -> Path:
    """Train the course's ResNet-18 on `data` (course layout) and save `{'model': state_dict, ...}` to `out`.

    Resumable: the state is written atomically to `<out>.partial` every few minutes and on interruption, and a
    later call with the same config and data continues from it. A complete checkpoint for the same config and data
    (train.json and every image's size and modification time) is kept as is unless `force`.
    """
    from .data import CourseData, IclevrDataset, training_fingerprint

    cfg = EvaluatorTrainConfig(**_config_dict(config)) if config is not None else EvaluatorTrainConfig()
    if seed is not None:
        cfg.seed = seed
    root = Path(data)
    out = Path(out) if out is not None else root / "evaluator.pth"
    partial = out.with_name(out.name + ".partial")
    dev = resolve_device(device)
    if cfg.width == 0:  # auto: the full network on a GPU, a narrow one (~4x fewer operations) on a CPU
        cfg.width = 64 if dev.type == "cuda" else 32
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; --out takes the checkpoint's file path, e.g. {out / 'evaluator.pth'}")
    check_writable_dir(out.parent)  # before training, not after it
    course = CourseData(root)
    key, cfg_dict = training_fingerprint(course), _config_dict(cfg)  # train.json and each image's size and mtime

    if not force and out.is_file():
        done = _try_load(out)
        if done and done.get("complete") and done.get("data_key") == key and _same_run(done.get("config"), cfg_dict):
            print(f"evaluator: {out} is up to date (same config and data; force=True / --force retrains)")
            return out
    if force and partial.exists():
        partial.unlink()
    ds = IclevrDataset(root, RESOLUTION, progress=progress)

    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(cfg.threads or idle_cores())
    try:
        return _train(cfg, ds, out, partial, dev, key, cfg_dict, progress)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: EvaluatorTrainConfig, ds, out: Path, partial: Path, dev: torch.device, key: str, cfg_dict: dict,
           progress: bool) -> Path:
    """The training loop of `train_evaluator` (see there)."""
    from tqdm.auto import tqdm

    n_val = min(cfg.val_images, len(ds) // 5)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(cfg.seed))
    val_idx, train_idx = order[:n_val], order[n_val:]
    images = ds.images.to(dev)                                  # (N, 3, 64, 64) uint8
    labels = ds.labels.to(dev)                                  # (N, 24)
    steps_per_epoch = max(1, len(train_idx) // cfg.batch_size)  # drop the last partial batch (BN wants full ones)
    if cfg.paste > 0:
        from .data import object_masks
        masks = object_masks(ds.images).to(dev)                 # (N, 64, 64) bool
        area = masks.flatten(1).sum(1).cpu()
        one = (ds.labels.sum(1) == 1) & (area >= 16) & (area <= 0.25 * masks[0].numel())
        one[val_idx] = False
        donors = torch.nonzero(one).flatten()                   # one-object training images with a sane mask
        if len(donors) == 0:
            print("evaluator: no one-object images to paste from; training without pasting", file=sys.stderr)
    total_steps = cfg.epochs * steps_per_epoch
    budget = cfg.max_minutes * 60 or float("inf")

    torch.manual_seed(cfg.seed)
    model = ResNet18(width=cfg.width).to(dev)
    if cfg.zero_init_residual:
        for m in model.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed = 0, 0.0
    state = _try_load(partial) if partial.exists() else None
    if state and _same_run(state.get("config"), cfg_dict) and state.get("data_key") == key:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"evaluator: resuming {partial} at step {step} ({elapsed / 60:.1f} min done)")
    elif partial.exists():
        print(f"evaluator: ignoring {partial} (another config or dataset)")

    def save_partial() -> None:
        with atomic_path(partial) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "elapsed": elapsed, "config": cfg_dict, "data_key": key}, tmp)

    model.train()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
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
            lr = cfg.lr * _lr_factor(max((step + 1) / total_steps, elapsed / budget), cfg.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            epoch, pos = divmod(step, steps_per_epoch)
            perm = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
            idx = train_idx[perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]].to(dev)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            x0, y0 = images[idx].float() / 127.5 - 1.0, labels[idx]   # (B, 3, 64, 64), (B, 24)
            if cfg.paste > 0 and len(donors):
                x0, y0 = paste_objects(x0, y0, masks[idx], donors, ds.images, ds.labels, masks, cfg.paste, gen)
            if res != RESOLUTION:
                x0 = F.interpolate(x0, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
            x0 = augment(x0, cfg, gen)                                 # (B, 3, res, res)
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
            if step % steps_per_epoch == 0 and n_val:
                acc = _held_out_accuracy(model, images[val_idx.to(dev)], labels[val_idx.to(dev)])
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

    x_val, y_val = images[val_idx.to(dev)], labels[val_idx.to(dev)]
    acc = _held_out_accuracy(model, x_val, y_val) if n_val else float("nan")
    acc_rt = _held_out_accuracy(model, x_val, y_val, rt=True) if n_val else float("nan")
    model = model.to(memory_format=torch.contiguous_format)
    ckpt = {"model": {k: v.contiguous() for k, v in widen_state_dict(model.state_dict()).items()},
            "complete": True, "train_width": cfg.width, "config": cfg_dict, "data": str(ds.root), "data_key": key,
            "steps": step, "epochs_done": step / steps_per_epoch, "train_seconds": elapsed, "device": str(dev),
            "held_out_accuracy": acc, "held_out_accuracy_round_trip": acc_rt,
            "load_avg_start": load_start, "load_avg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
            "torch_threads": torch.get_num_threads(),
            "arch": "torchvision resnet18, fc = Sequential(Linear(512, 24), Sigmoid())"}
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    if partial.exists():
        partial.unlink()
    print(f"evaluator: saved {out} (width {cfg.width}, {step} steps, {step / steps_per_epoch:.2f} epochs, "
          f"{elapsed / 60:.1f} min; "
          f"held-out accuracy {acc:.4f}, after a 64->32->64 round trip {acc_rt:.4f})")
    return out
