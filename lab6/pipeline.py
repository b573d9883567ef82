"""ConditionalDDPMPipeline: label sets in, 64x64 images out, with classifier-free guidance and any scheduler.

    pipe = ConditionalDDPMPipeline.from_pretrained("outputs/quick/train/pipeline")
    images = pipe(labels=[["red sphere", "cyan cube"]], num_inference_steps=25, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0)).images        # list of PIL images

Swap the sampler with `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)` (or
`lab6.schedules.make_scheduler(pipe.scheduler, "ddim")`). The saved scheduler is the model's default sampler;
its default step count and guidance scale are stored in model_index.json with it.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import re
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

from . import labels as L
from .config import check_guidance_scale
from .data import to_uint8
from .errors import CheckpointError, ConfigError
from .schedules import predict_x0

Generator = torch.Generator | list[torch.Generator] | None


@dataclass
class ConditionalDDPMPipelineOutput(BaseOutput):
    """images: PIL list, float tensor (B, 3, 64, 64) in [-1, 1] ('pt') or float array (B, 64, 64, 3) in [0, 1]
    ('np'); timesteps / xt / x0: the captured steps, x_t before each and the predicted x0 (S, B, 3, 64, 64)."""
    images: list | torch.Tensor | np.ndarray
    timesteps: list[int] | None = None
    xt: torch.Tensor | None = None
    x0: torch.Tensor | None = None


def guided(out_cond: torch.Tensor, out_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): uncond + s * (cond - uncond); s = 1 is the conditional model."""
    if guidance_scale == 1.0:
        return out_cond  # exactly, not up to rounding
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def as_multi_hot(labels, num_classes: int = L.NUM_CLASSES) -> torch.Tensor:
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
    return L.encode_batch(labels, "labels")


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B, 3, r, r) to (B, 3, size, size); identity when already that size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # (B, 3, size, size)


def import_lab6_components(folder: str | os.PathLike) -> None:
    """Import the lab6 modules that folder/model_index.json names as component libraries (diffusers imports none)."""
    index = Path(folder) / "model_index.json"
    try:
        entries = json.loads(index.read_text())
    except (OSError, ValueError):
        return  # a hub id, or a missing or corrupt folder: diffusers says what is wrong
    for name, entry in entries.items() if isinstance(entries, dict) else ():
        if not (isinstance(entry, list) and len(entry) == 2 and str(entry[0]).partition(".")[0] == "lab6"):
            continue  # diffusers' own components, and settings such as default_guidance_scale
        library, class_name = entry
        try:
            if not re.fullmatch(r"lab6(\.[a-z]\w*)*", library):
                raise ImportError("not a public lab6 module name")
            if not hasattr(importlib.import_module(library), str(class_name)):
                raise ImportError(f"it has no {class_name}")
        except ImportError as e:
            raise CheckpointError(f"{index}: {name}: cannot load {library}.{class_name} ({e}); was it written by "
                                  f"another version of lab6?") from None


class ConditionalDDPMPipeline(DiffusionPipeline):
    """Reverse diffusion (Algorithm 2 of Ho et al., or any diffusers scheduler) conditioned on object labels."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, default_num_inference_steps: int = 25, default_guidance_scale: float = 1.0,
                 default_eta: float = 0.0):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(default_num_inference_steps=int(default_num_inference_steps),
                                default_guidance_scale=float(default_guidance_scale), default_eta=float(default_eta))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """DiffusionPipeline.from_pretrained, after importing the lab6 modules that its model_index.json names."""
        import_lab6_components(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def resolve_settings(self, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                         eta: float | None = None) -> tuple[int, float, float]:
        """(steps, guidance scale, eta) of a call, checked: the given values, None meaning the saved default."""
        limit = self.scheduler.config.num_train_timesteps
        steps = int(self.config.default_num_inference_steps if num_inference_steps is None else num_inference_steps)
        if steps <= 0 or steps > limit:
            raise ConfigError(f"num_inference_steps: must be in 1..{limit}, got {steps}")
        scale = check_guidance_scale(self.config.default_guidance_scale if guidance_scale is None else guidance_scale,
                                     "guidance_scale")
        eta = float(self.config.get("default_eta", 0.0) if eta is None else eta)
        if not 0 <= eta <= 1:
            raise ConfigError(f"eta: must be in [0, 1] (0 = deterministic DDIM), got {eta}")
        return steps, scale, eta

    def _step_kwargs(self, generator: Generator, eta: float) -> dict:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kw = {}
        if "generator" in params:
            kw["generator"] = generator
        if "eta" in params:
            kw["eta"] = eta
        return kw

    def predict(self, xt: torch.Tensor, t, y: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Guided network output at one step; skips the unconditional pass when guidance_scale == 1."""
        if guidance_scale == 1.0:
            return self.unet(xt, t, y)  # (B, 3, r, r)
        out = self.unet(torch.cat([xt, xt]), t, torch.cat([y, torch.zeros_like(y)]))  # (2B, 3, r, r)
        out_cond, out_uncond = out.chunk(2)
        return guided(out_cond, out_uncond, guidance_scale)  # (B, 3, r, r)

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
    ):
        """Sample one image per label set; `capture_steps` are loop indices (0 = first, -1 = last) to record.
        `eta` (DDIM's noise, 0 = deterministic; other samplers ignore it) defaults to the saved default_eta."""
        y_all = as_multi_hot(labels)  # (B, 24)
        steps, scale, eta = self.resolve_settings(num_inference_steps, guidance_scale, eta)
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
                out = self.predict(x_in, t, y, scale)  # (b, 3, r, r)
                if i in capture:
                    tt = t.reshape(1).expand(len(xt)).cpu()
                    x0 = predict_x0(xt.float(), tt, out.float(), self.scheduler.config.prediction_type,
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
