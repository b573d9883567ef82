"""Where the tensors live: the device asked for, checked against this machine, else cuda when there is one."""
from __future__ import annotations

import torch

from .config import check_device


def resolve_device(device: str | torch.device | None = None, where: str = "--device") -> torch.device:
    """`device` ('cpu', 'cuda' or 'cuda:N' that this machine has; ConfigError naming `where` otherwise), or cuda
    when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(str(device), where)
    return torch.device(device)
