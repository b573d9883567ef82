"""FID and KID on the evaluator's pooled features: how far generated images lie from ground-truth renders.

torchmetrics' `FrechetInceptionDistance` / `KernelInceptionDistance` with a custom feature module: the
evaluator's ResNet-18 up to its 512-d average pool, so nothing is downloaded and the features are those of the
judge that reads these scenes. Compare a model's figure with the floor: two independent render seeds of the
same label sets, which differ only in camera, placement and lighting.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from .evaluator import Evaluator, ResNet18

RENDER_REFERENCE_NOTE = ("The count checker was trained on this project's renders and FID / KID compare against them: "
                         "on the course's images both measure the distance to the synthetic renderer, not to the "
                         "course's data. Read them as indicative; top-k is the course's measure.")


class EvaluatorFeatures(nn.Module):
    """The evaluator's pooled features (B, 512) of images (B, 3, 64, 64) in [-1, 1]."""

    num_features = 512

    def __init__(self, net: ResNet18):
        super().__init__()
        self.net = net.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x.float()))))   # (B, 64, 16, 16)
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))      # (B, 512, 2, 2)
        return torch.flatten(n.avgpool(x), 1)               # (B, 512)


def kid_subset_size(n: int) -> int:
    """KID's subset size for n images per side: half of them, at most torchmetrics' default 1000."""
    return max(2, min(1000, n // 2))


def fid_kid(real: torch.Tensor, fake: torch.Tensor, evaluator: Evaluator | None = None,
            batch_size: int = 256) -> dict:
    """FID and KID (mean, std over 100 subsets) between float images real and fake (N, 3, 64, 64) in [-1, 1]."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    ev = evaluator if evaluator is not None else Evaluator()
    feats = EvaluatorFeatures(ev.model)
    n = min(len(real), len(fake))
    fid = FrechetInceptionDistance(feature=feats, reset_real_features=True)
    with warnings.catch_warnings():  # "will save all extracted features": 512 floats per image, a few MB here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=feats, subset_size=kid_subset_size(n), reset_real_features=True)
    torch.manual_seed(0)  # KID's subsets
    for images, is_real in ((real, True), (fake, False)):
        for i in range(0, len(images), batch_size):
            batch = ev._prepare(images[i:i + batch_size]).to(ev.device)  # (b, 3, 64, 64)
            fid.update(batch, real=is_real)
            kid.update(batch, real=is_real)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
            "real": len(real), "fake": len(fake), "kid_subset": kid_subset_size(n)}


def grid_power(images: torch.Tensor, period: int) -> torch.Tensor:
    """Mean spectral power (per image, (N,)) of the mean-removed grayscale image at the bins of a `period`-pixel
    grid: every (i, j) with i, j multiples of side / period, both axes, its harmonics included, (0, 0) excluded."""
    gray = images.float().mean(1)                                     # (N, H, W)
    gray = gray - gray.mean((1, 2), keepdim=True)
    power = torch.fft.fft2(gray).abs() ** 2                           # (N, H, W)
    side = gray.shape[-1]
    step = side // period
    bins = power[:, ::step, ::step].flatten(1)[:, 1:]                 # (N, period² - 1): (0, 0) left out
    return bins.mean(1)


def grain(generated: torch.Tensor, truth: torch.Tensor, period: int = 4) -> float:
    """How much more power generated images (N, 3, R, R) hold at a `period`-pixel grid than the ground truth of
    the same label sets: 1 = none added; the patch grid of a p×p-patch model shows as grain at period p."""
    return float(grid_power(generated, period).mean() / grid_power(truth, period).mean())
