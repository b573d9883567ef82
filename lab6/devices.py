"""What this machine offers: the device the tensors live on (the one asked for, checked, else cuda when there is
one) and the CPU cores a process may use or finds idle."""
from __future__ import annotations

import os
import time

import torch

from .config import check_device


def resolve_device(device: str | torch.device | None = None, where: str = "--device") -> torch.device:
    """`device` ('cpu', 'cuda' or 'cuda:N' that this machine has; ConfigError naming `where` otherwise), or cuda
    when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(str(device), where)
    return torch.device(device)


def cpu_count() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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

    On a shared CPU, torch threads that outnumber the free cores wait on each other, so a step runs many times
    slower than with fewer threads. Busy-ness is sampled over half a second from /proc/stat, not taken from the
    1-minute load average, which still counts work that has just finished (such as a data render just before).
    """
    cores = cpu_count()
    busy = _cpu_busy()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (OSError, AttributeError):
            busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages; [] where the system has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else []
