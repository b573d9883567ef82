"""The course's judge: a multi-label ResNet-18 and its pooled top-k accuracy (training one: `evaluator_train`).

The course scores generated images with torchvision's `resnet18` whose `fc` is `Sequential(Linear(512, 24),
Sigmoid())`, loaded from `checkpoint.pth` (`torch.load(path)['model']`). `ResNet18` below rebuilds that network
without torchvision: same module names, so the course's state_dict loads unchanged, and the same forward.
"""
from __future__ import annotations

import os
import pickle
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import labels as L
from .data import DATA_DIR, is_default_synth
from .devices import resolve_device
from .errors import CheckpointError, DataError, LabelError, first_line

RESOLUTION = 64  # the course evaluator's input side, fixed by its checkpoint: other image sizes are resized to it
COURSE_CHECKPOINT = DATA_DIR / "iclevr" / "checkpoint.pth"  # the data folder of lab6.data ($LAB6_DATA_DIR), any cwd
SYNTH_CHECKPOINT = DATA_DIR / "synth" / "evaluator.pth"
SHIPPED_EVALUATOR = Path(__file__).resolve().parents[1] / "pretrained" / "evaluator" / "checkpoint.pth"
HOW_TO_GET = ("put the course's checkpoint.pth in data/iclevr/, or train one on the synthetic data with "
              "`lab6 train-evaluator --data data/synth`")
TRUST_ENV = "LAB6_TRUST_CHECKPOINTS"  # =1: unpickle Python objects in checkpoints (what --trust-checkpoint sets)
TRUST_OPTION = "--trust-checkpoint"

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


def trusts_checkpoints() -> bool:
    """True when the user opted into the full unpickler: $LAB6_TRUST_CHECKPOINTS=1 (--trust-checkpoint sets it)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def trust_checkpoints() -> None:
    """Opt in for this process and the notebooks it starts (what --trust-checkpoint does)."""
    os.environ[TRUST_ENV] = "1"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    trust: bool | None = None) -> dict:
    """torch.load an evaluator checkpoint and check it is `{'model': course ResNet-18 state_dict, ...}`; a file
    that pickles Python objects is refused unless trusted (`trust`, else $LAB6_TRUST_CHECKPOINTS)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: evaluator checkpoint not found; {HOW_TO_GET}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({first_line(e)})") from None
        if not (trusts_checkpoints() if trust is None else trust):  # unpickling them could run any code
            raise CheckpointError(f"{path}: holds pickled Python objects besides tensors, which could run code when "
                                  f"loaded; if you trust the file, pass {TRUST_OPTION} or set {TRUST_ENV}=1") from None
        warnings.warn(f"{path}: loading its pickled Python objects with weights_only=False ({TRUST_ENV}=1)",
                      stacklevel=2)
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e2:
            raise CheckpointError(f"{path}: cannot be loaded ({first_line(e2)})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or another format "
                              f"({first_line(e)})") from None
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
        for kind, related in ((WRONG_SHAPE, lambda a, b: L.colour_of(a) == L.colour_of(b)),
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


def get_evaluator(evaluator=None, data_root: str | os.PathLike | None = None, device: str | None = None):
    """An Evaluator: the given one, a checkpoint path, the one in data_root, else the default; None (with a
    one-line warning) when there is none."""
    if evaluator is not None and not isinstance(evaluator, (str, os.PathLike)):
        return evaluator
    try:
        try:
            path = find_evaluator(evaluator, data_root=data_root)
        except CheckpointError:
            if evaluator is not None or data_root is None:
                raise
            path = find_evaluator()
        return Evaluator(path, device=device)
    except CheckpointError as e:
        print(f"warning: accuracy not computed: {e}", file=sys.stderr)
        return None
