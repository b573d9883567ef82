"""Changes of light and lens on images in [-1, 1]: white balance (a gain per channel), gamma, brightness, blur.

A person sees the same scene under each of them; a judge that learned the renderer's exact palette values does
not. The judges are trained with `random_light` (a draw of the first three per image) and benchmarked with
`relight` and `gaussian_blur`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LightRange:
    """How far `random_light` moves each image: gains in 1 ± gain, gamma in [1/gamma, gamma], offset in ± offset."""

    gain: float = 0.07    # per channel: 1 ± 0.07 covers the ±5-6 % tints a judge must read through
    gamma: float = 1.15   # log-uniform in [1/1.15, 1.15] covers gamma 0.9-1.1
    offset: float = 0.03  # added in [0, 1] units: covers ±0.02 of brightness


def relight(x: torch.Tensor, gain: Sequence[float] | torch.Tensor = (1.0, 1.0, 1.0), gamma: float | torch.Tensor = 1.0,
            offset: float | torch.Tensor = 0.0) -> torch.Tensor:
    """x (B, 3, H, W) in [-1, 1] seen under another light: u -> clamp(gain * u) ** gamma + offset, u in [0, 1].

    gain is (3,) or (B, 3); gamma and offset are scalars or (B,).
    """
    def per_image(v, shape) -> torch.Tensor:
        return torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(shape)

    b = x.shape[0]
    g = per_image(gain, (-1, 3)).expand(b, 3)[:, :, None, None]              # (B, 3, 1, 1)
    gm = per_image(gamma, (-1,)).expand(b)[:, None, None, None]              # (B, 1, 1, 1)
    off = per_image(offset, (-1,)).expand(b)[:, None, None, None]            # (B, 1, 1, 1)
    u = ((x + 1) / 2 * g).clamp(0, 1) ** gm + off                            # (B, 3, H, W) in [0, 1] + offset
    return (u * 2 - 1).clamp(-1, 1)


def random_light(x: torch.Tensor, gen: torch.Generator, span: LightRange = LightRange()) -> torch.Tensor:
    """x (B, 3, H, W) in [-1, 1], each image under its own light drawn uniformly from `span`."""
    b = x.shape[0]

    def uniform(*shape) -> torch.Tensor:
        return torch.rand(*shape, generator=gen) * 2 - 1                      # in [-1, 1)

    gain = 1 + span.gain * uniform(b, 3)                                      # (B, 3)
    gamma = torch.exp(torch.log(torch.tensor(span.gamma)) * uniform(b))      # (B,)
    offset = span.offset * uniform(b)                                         # (B,)
    return relight(x, gain, gamma, offset)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
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
