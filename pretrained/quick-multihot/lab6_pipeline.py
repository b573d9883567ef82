"""ConditionalDDPMPipeline: label sets in, 64x64 images out, with classifier-free guidance and any scheduler.

    pipe = ConditionalDDPMPipeline.from_pretrained("outputs/quick/train/pipeline")
    images = pipe(labels=[["red sphere", "cyan cube"]], num_inference_steps=25, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0)).images        # list of PIL images

Swap the sampler with `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)` (or
`lab6.schedules.make_scheduler(pipe.scheduler, "ddim")`). The saved scheduler is the model's default sampler;
its default step count and guidance scale are stored in model_index.json with it.

This file imports only torch, diffusers, numpy, PIL and the standard library: `save_pretrained` copies it
(lab6_pipeline.py) and the UNet's module (unet/lab6_model.py) into the folder, so that plain diffusers loads it
with `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`. As lab6's own module it raises lab6's
error types; the copy raises ValueError.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

Generator = torch.Generator | list[torch.Generator] | None
PIPELINE_FILE, UNET_FILE = "lab6_pipeline.py", "lab6_model.py"  # the code copies that an export carries
# lab6.labels' vocabulary, repeated so that this file stands alone: 8 cubes, 8 spheres, 8 cylinders (course order).
SHAPES = ("cube", "sphere", "cylinder")
COLOURS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
OBJECTS = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)
MAX_OBJECTS = 3


def _error_types() -> tuple[type[Exception], type[Exception], type[Exception]]:
    """(ConfigError, LabelError, CheckpointError): lab6's own when this is lab6's module (its CLI prints them on one
    line), ValueError / ValueError / OSError in the copy that an export carries."""
    if __package__ != "lab6":
        return ValueError, ValueError, OSError
    errors = importlib.import_module("lab6.errors")
    return errors.ConfigError, errors.LabelError, errors.CheckpointError


ConfigError, LabelError, CheckpointError = _error_types()


@dataclass
class ConditionalDDPMPipelineOutput(BaseOutput):
    """images: PIL list, float tensor (B, 3, 64, 64) in [-1, 1] ('pt') or float array (B, 64, 64, 3) in [0, 1]
    ('np'); timesteps / xt / x0: the captured steps, x_t before each and the predicted x0 (S, B, 3, 64, 64)."""
    images: list | torch.Tensor | np.ndarray
    timesteps: list[int] | None = None
    xt: torch.Tensor | None = None
    x0: torch.Tensor | None = None


def object_rows(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One one-hot row per object of every set with two or more objects, and the set each belongs to: (M, 24), (M,).
    A one-object set has none: its object's term would repeat the whole set's."""
    multi = y.sum(1) >= 2                                              # (B,)
    owner, index = torch.nonzero(y * multi[:, None], as_tuple=True)    # (M,), (M,)
    return F.one_hot(index, y.shape[1]).to(y.dtype), owner


def composed(out_set: torch.Tensor, out_uncond: torch.Tensor, out_objects: torch.Tensor, owner: torch.Tensor,
             guidance_scale: float, object_scale: float) -> torch.Tensor:
    """Composable guidance (Liu et al. 2022) beside the set's: uncond + s * (set - uncond) + o * sum_i (obj_i -
    uncond), one term per object i of its set; out_objects (M, ...) belongs to the sets `owner` (M,) names."""
    out = guided(out_set, out_uncond, guidance_scale)                  # (B, 3, r, r)
    return out.index_add(0, owner, object_scale * (out_objects - out_uncond[owner]))


def patch_offset(i: int, patch: int) -> tuple[int, int]:
    """Pixel offset (dy, dx) of step i's patch grid: a stride coprime to patch**2 visits every offset once in
    patch**2 steps, spread over the image rather than along a row; (0, 0) for a model without patches."""
    n = patch * patch
    if n <= 1:
        return 0, 0
    stride = next(k for k in range(n // 2 + 1, 2 * n) if math.gcd(k, n) == 1)
    return divmod(i * stride % n, patch)


def shifted(predict, xt: torch.Tensor, offset: tuple[int, int], t: torch.Tensor, prediction_type: str,
            alphas_cumprod: torch.Tensor, *args) -> torch.Tensor:
    """predict(x_t, t, *args) with the patch grid moved by `offset` (dy, dx) pixels: x_t moves down and right,
    mirrored into the rows and columns it uncovers, so the grid's seams fall on other pixels at every step instead
    of adding up to a grain. The last dy rows and dx columns fall out of the frame: their x0 is the nearest row's
    and column's that the network saw (the floor at an image's edge), turned back into the network's output type."""
    if offset == (0, 0):
        return predict(xt, t, *args)
    (dy, dx), (h, w) = offset, xt.shape[-2:]
    moved = F.pad(xt, (dx, 0, dy, 0), mode="reflect")[..., :h, :w]                     # (B, 3, h, w)
    tt = t.reshape(1).expand(len(xt))                                                  # (B,)
    x0 = estimate_x0(moved, tt, predict(moved, t, *args), prediction_type, alphas_cumprod)[..., dy:, dx:]
    x0 = F.pad(x0, (0, dx, 0, dy), mode="replicate")                                   # (B, 3, h, w)
    return output_from_x0(xt, tt, x0, prediction_type, alphas_cumprod)


def guided(out_cond: torch.Tensor, out_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): uncond + s * (cond - uncond); s = 1 is the conditional model."""
    if guidance_scale == 1.0:
        return out_cond  # exactly, not up to rounding
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def encode_label_set(names, where: str = "label set") -> torch.Tensor:
    """Multi-hot float (24,) of one label set: 1-3 distinct object names such as "red sphere"."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not 1 <= len(names) <= MAX_OBJECTS:
        raise LabelError(f'{where}: expected a list of 1 to {MAX_OBJECTS} object names such as ["red sphere"], '
                         f"got {names!r}")
    row = torch.zeros(len(OBJECTS))
    for j, name in enumerate(names):
        if name not in OBJECTS:
            close = difflib.get_close_matches(str(name).strip().lower(), OBJECTS, n=3, cutoff=0.4)
            hint = (f"did you mean {' or '.join(map(repr, close))}?" if close else
                    f"valid names are '<colour> <shape>' with colours {', '.join(COLOURS)} and shapes {', '.join(SHAPES)}")
            raise LabelError(f"{where}[{j}]: unknown object {name!r}; {hint}")
        if row[OBJECTS.index(name)]:
            raise LabelError(f"{where}[{j}]: duplicate object {name!r}; each object may appear once per set")
        row[OBJECTS.index(name)] = 1.0
    return row


def as_multi_hot(labels, num_classes: int = len(OBJECTS)) -> torch.Tensor:
    """Label sets (list of lists of names) or a multi-hot tensor -> float (B, 24)."""
    if isinstance(labels, torch.Tensor):
        y = labels.float()
        if y.ndim == 1:
            y = y[None]
        if y.ndim != 2 or y.shape[1] != num_classes:
            raise ConfigError(f"labels: expected a multi-hot tensor (B, {num_classes}), got {tuple(labels.shape)}")
        return y
    if isinstance(labels, (list, tuple)) and labels and all(isinstance(s, str) for s in labels):
        labels = [labels]  # one label set given bare
    rows = [encode_label_set(names, f"labels[{i}]") for i, names in enumerate(labels)]
    if not rows:
        raise LabelError("labels: no label sets given")
    return torch.stack(rows)  # (B, 24)


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B, 3, r, r) to (B, 3, size, size); identity when already that size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # (B, 3, size, size)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float images (B, 3, H, W) in [-1, 1] -> uint8 array (B, H, W, 3)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _alphas_cumprod_at(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod[t] for timesteps t (B,), shaped (B, 1, 1, 1) on `like`'s device and dtype."""
    alpha_prod_t = alphas_cumprod.to(torch.float32)[t.to(alphas_cumprod.device).long()]  # (B,)
    return alpha_prod_t.to(like.device, like.dtype).reshape(-1, 1, 1, 1)


def estimate_x0(xt: torch.Tensor, t: torch.Tensor, out: torch.Tensor, prediction_type: str,
                alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The network's estimate of x0 (B, 3, r, r) from x_t, timesteps t (B,) and its eps or v output."""
    alpha_prod_t = _alphas_cumprod_at(alphas_cumprod, t, xt)  # (B, 1, 1, 1)
    if prediction_type == "epsilon":
        return (xt - (1 - alpha_prod_t).sqrt() * out) / alpha_prod_t.sqrt().clamp_min(1e-8)
    if prediction_type == "v_prediction":
        return alpha_prod_t.sqrt() * xt - (1 - alpha_prod_t).sqrt() * out
    raise ConfigError(f"unknown prediction_type {prediction_type!r}; valid: epsilon, v_prediction")


def output_from_x0(xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, prediction_type: str,
                   alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The eps or v output (B, 3, r, r) that `estimate_x0` turns into x0 at x_t and timesteps t (B,)."""
    alpha_prod_t = _alphas_cumprod_at(alphas_cumprod, t, xt)  # (B, 1, 1, 1)
    if prediction_type == "epsilon":
        return (xt - alpha_prod_t.sqrt() * x0) / (1 - alpha_prod_t).sqrt().clamp_min(1e-8)
    if prediction_type == "v_prediction":
        return (alpha_prod_t.sqrt() * xt - x0) / (1 - alpha_prod_t).sqrt().clamp_min(1e-8)
    raise ConfigError(f"unknown prediction_type {prediction_type!r}; valid: epsilon, v_prediction")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file beside it: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_code(folder: str | os.PathLike, unet_class: type) -> None:
    """Copy this module and the UNet class's into a save_pretrained folder and name them in its model_index.json."""
    folder = Path(folder)
    if unet_class.__module__.partition(".")[0] == "diffusers":
        return  # diffusers' own UNet: plain diffusers has its code
    _write_atomic(folder / PIPELINE_FILE, Path(__file__).read_bytes())
    _write_atomic(folder / "unet" / UNET_FILE, Path(inspect.getsourcefile(unet_class)).read_bytes())
    index = json.loads((folder / "model_index.json").read_text())
    index.update(_class_name=[Path(PIPELINE_FILE).stem, ConditionalDDPMPipeline.__name__],
                 unet=[Path(UNET_FILE).stem, unet_class.__name__])
    _write_atomic(folder / "model_index.json", (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())


def _read_index(folder: Path) -> dict | None:
    """A local folder's model_index.json, or None (a hub id, or a missing or corrupt folder: diffusers says which)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


def lab6_unet_class(folder: Path, index: dict) -> type | None:
    """lab6's class for an export's UNet: lab6.model's for the code copy a new export carries, the lab6 module an
    old one names (["lab6.model", "ConditionalUNet"]); None for another library's UNet."""
    entry = index.get("unet")
    if not (isinstance(entry, list) and len(entry) == 2):
        return None
    library, class_name = map(str, entry)
    if (folder / "unet" / f"{library}.py").is_file():
        library = "lab6.model"  # lab6 runs its own code, not the folder's copy of it
    elif library.partition(".")[0] != "lab6":
        return None
    try:
        if not re.fullmatch(r"lab6(\.[a-z]\w*)*", library):
            raise ImportError("not a public lab6 module name")
        found = getattr(importlib.import_module(library), class_name, None)
        if found is None:
            raise ImportError(f"it has no {class_name}")
    except ImportError as e:
        raise CheckpointError(f"{folder / 'model_index.json'}: unet: cannot load {library}.{class_name} ({e}); was it "
                              f"written by another version of lab6?") from None
    return found


class ConditionalDDPMPipeline(DiffusionPipeline):
    """Reverse diffusion (Algorithm 2 of Ho et al., or any diffusers scheduler) conditioned on object labels."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, default_num_inference_steps: int = 25, default_guidance_scale: float = 1.0,
                 default_eta: float = 0.0, default_object_guidance_scale: float = 0.0,
                 default_shift_patches: bool = False):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(default_num_inference_steps=int(default_num_inference_steps),
                                default_guidance_scale=float(default_guidance_scale), default_eta=float(default_eta),
                                default_object_guidance_scale=float(default_object_guidance_scale),
                                default_shift_patches=bool(default_shift_patches))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """DiffusionPipeline.from_pretrained; in lab6, a lab6 export is built from lab6's own classes, not the copies
        of their code that it carries. kwargs: torch_dtype, or components and settings that replace the saved ones."""
        folder = Path(pretrained_model_name_or_path)
        index = _read_index(folder) if __package__ == "lab6" else None
        unet_class = lab6_unet_class(folder, index) if index else None
        if unet_class is None:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        torch_dtype = kwargs.pop("torch_dtype", None)
        if "unet" not in kwargs:
            kwargs["unet"] = unet_class.from_pretrained(folder / "unet", torch_dtype=torch_dtype)
        if "scheduler" not in kwargs:
            kwargs["scheduler"] = cls._saved_scheduler(folder, index)
        return cls(**{**{k: v for k, v in index.items() if k.startswith("default_")}, **kwargs})

    @staticmethod
    def _saved_scheduler(folder: Path, index: dict):
        """The diffusers scheduler that model_index.json names, with its saved config."""
        entry = index.get("scheduler")
        scheduler_class = None
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers":
            scheduler_class = getattr(importlib.import_module("diffusers"), str(entry[1]), None)
        if scheduler_class is None:
            raise CheckpointError(f"{folder / 'model_index.json'}: scheduler: expected [\"diffusers\", <scheduler "
                                  f"class>] such as [\"diffusers\", \"DDIMScheduler\"], got {entry!r}")
        return scheduler_class.from_pretrained(folder / "scheduler")

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """DiffusionPipeline.save_pretrained, plus this code and the UNet's (see `write_code`)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_code(save_directory, type(self.unet))

    def resolve_settings(self, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                         eta: float | None = None) -> tuple[int, float, float]:
        """(steps, guidance scale, eta) of a call, checked: the given values, None meaning the saved default."""
        limit = self.scheduler.config.num_train_timesteps
        steps = int(self.config.default_num_inference_steps if num_inference_steps is None else num_inference_steps)
        if steps <= 0 or steps > limit:
            raise ConfigError(f"num_inference_steps: must be in 1..{limit}, got {steps}")
        scale = float(self.config.default_guidance_scale if guidance_scale is None else guidance_scale)
        if scale < 0:
            raise ConfigError(f"guidance_scale: must be >= 0 (1 = no guidance), got {scale}")
        eta = float(self.config.get("default_eta", 0.0) if eta is None else eta)
        if not 0 <= eta <= 1:
            raise ConfigError(f"eta: must be in [0, 1] (0 = deterministic DDIM), got {eta}")
        return steps, scale, eta

    def resolve_object_scale(self, object_guidance_scale: float | None = None) -> float:
        """The per-object guidance scale of a call, checked: the given value, None meaning the saved default."""
        o = float(self.config.get("default_object_guidance_scale", 0.0) if object_guidance_scale is None
                  else object_guidance_scale)
        if not 0 <= o < float("inf"):
            raise ConfigError(f"object_guidance_scale: must be >= 0 (0 = none), got {o}")
        return o

    def resolve_shift_patches(self, shift_patches: bool | None = None) -> bool:
        """Whether a call moves the patch grid: the given value, None meaning the saved default (off if none)."""
        return bool(self.config.get("default_shift_patches", False) if shift_patches is None else shift_patches)

    def _step_kwargs(self, generator: Generator, eta: float) -> dict:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kw = {}
        if "generator" in params:
            kw["generator"] = generator
        if "eta" in params:
            kw["eta"] = eta
        return kw

    def predict(self, xt: torch.Tensor, t, y: torch.Tensor, guidance_scale: float,
                object_scale: float = 0.0) -> torch.Tensor:
        """Guided network output at one step; skips the unconditional pass when guidance_scale == 1 and
        object_scale == 0; with object_scale, one more pass per object of each set of two or more (`composed`)."""
        if guidance_scale == 1.0 and not object_scale:
            return self.unet(xt, t, y)  # (B, 3, r, r)
        rows, owner = object_rows(y) if object_scale else (y[:0], torch.zeros(0, dtype=torch.long))
        owner = owner.to(xt.device)
        out = self.unet(torch.cat([xt, xt, xt[owner]]), t, torch.cat([y, torch.zeros_like(y), rows]))  # (2B+M, ...)
        out_set, out_uncond, out_objects = out.split([len(y), len(y), len(rows)])
        return composed(out_set, out_uncond, out_objects, owner, guidance_scale, object_scale)  # (B, 3, r, r)

    @torch.no_grad()
    def __call__(
        self,
        labels,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: Generator = None,
        eta: float | None = None,
        batch_size: int | None = None,
        capture_steps: Sequence[int] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        object_guidance_scale: float | None = None,
        shift_patches: bool | None = None,
    ):
        """Sample one image per label set; `capture_steps` are loop indices (0 = first, -1 = last) to record.
        `eta` (DDIM's noise, 0 = deterministic; other samplers ignore it) defaults to the saved default_eta;
        `object_guidance_scale` (one guidance term per object beside the set's, `composed`) to the saved one or 0;
        `shift_patches` (move a patch model's grid by `patch_offset(i)` at step i, `shifted`) to the saved one."""
        y_all = as_multi_hot(labels)  # (B, 24)
        steps, scale, eta = self.resolve_settings(num_inference_steps, guidance_scale, eta)
        object_scale = self.resolve_object_scale(object_guidance_scale)
        shift = self.resolve_shift_patches(shift_patches)
        if batch_size is not None and batch_size <= 0:
            raise ConfigError(f"batch_size: must be > 0 (or None for all at once), got {batch_size}")
        if output_type not in ("pil", "pt", "np"):
            raise ConfigError(f"output_type: must be 'pil', 'pt' or 'np', got {output_type!r}")
        if isinstance(generator, list) and len(generator) != len(y_all):
            raise ConfigError(f"generator: {len(generator)} generators for {len(y_all)} label sets")
        capture = sorted({i % steps for i in capture_steps}) if capture_steps else []
        n = len(y_all)
        bs = n if batch_size is None else batch_size
        cfg = self.unet.config
        r, size = cfg.sample_size, cfg.output_size
        patch = int(cfg.get("patch_size", 1) or 1) if shift else 1
        dtype = next(self.unet.parameters()).dtype
        # One draw of x_T for the whole set, so images do not depend on batch_size.
        x_T = randn_tensor((n, cfg.in_channels, r, r), generator=generator, device=self.device, dtype=dtype)

        images, xts, x0s, t_list = [], [], [], []
        for start in range(0, n, bs):
            sl = slice(start, start + bs)
            gen = generator[sl] if isinstance(generator, list) else generator
            y = y_all[sl].to(self.device, dtype)  # (b, 24)
            xt = x_T[sl] * self.scheduler.init_noise_sigma  # (b, 3, r, r)
            self.scheduler.set_timesteps(steps, device=self.device)
            kw = self._step_kwargs(gen, eta)
            cap_xt, cap_x0, cap_t = [], [], []
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                x_in = self.scheduler.scale_model_input(xt, t)  # (b, 3, r, r)
                out = shifted(self.predict, x_in, patch_offset(i, patch), t, self.scheduler.config.prediction_type,
                              self.scheduler.alphas_cumprod, y, scale, object_scale)  # (b, 3, r, r)
                if i in capture:
                    tt = t.reshape(1).expand(len(xt)).cpu()
                    x0 = estimate_x0(xt.float(), tt, out.float(), self.scheduler.config.prediction_type,
                                     self.scheduler.alphas_cumprod)  # (b, 3, r, r)
                    cap_xt.append(upsample(xt.float(), size).cpu())
                    cap_x0.append(upsample(x0.clamp(-1, 1), size).cpu())
                    cap_t.append(int(t))
                xt = self.scheduler.step(out, t, xt, **kw).prev_sample  # (b, 3, r, r)
            images.append(upsample(xt.float(), size).clamp(-1, 1).cpu())  # (b, 3, 64, 64)
            if capture:
                xts.append(torch.stack(cap_xt)), x0s.append(torch.stack(cap_x0))
                t_list = cap_t
        x = torch.cat(images)  # (B, 3, 64, 64)
        if output_type == "pil":
            result = [Image.fromarray(a) for a in to_uint8(x)]
        elif output_type == "np":
            result = ((x + 1) / 2).permute(0, 2, 3, 1).numpy()  # (B, 64, 64, 3) in [0, 1]
        else:
            result = x
        xt_cap = torch.cat(xts, dim=1) if capture else None  # (S, B, 3, 64, 64)
        x0_cap = torch.cat(x0s, dim=1) if capture else None
        if not return_dict:
            return (result,)
        return ConditionalDDPMPipelineOutput(images=result, timesteps=t_list or None, xt=xt_cap, x0=x0_cap)
