"""Helpers shared by the benchmark scripts: list options, result folders, machine info, tables and CSV files."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/X.py` without the package installed
    sys.path.insert(0, str(REPO))


def _number_list(text: str, kind: type, what: str) -> list:
    import argparse
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}s, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one {what}")
    return values


def float_list(text: str) -> list[float]:
    """'5,10,20' -> [5.0, 10.0, 20.0] (argparse type)."""
    return _number_list(text, float, "number")


def int_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (argparse type)."""
    return _number_list(text, int, "integer")


def name_list(text: str) -> list[str]:
    """'test,new_test' -> ['test', 'new_test'] (argparse type); commas inside [...] stay, as in 'quick+c=[64,64]'."""
    items, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [v.strip() for v in (*items, cur) if v.strip()]


def default_out(kind: str) -> Path:
    """benchmarks/results/<kind>-<date>/, with -2, -3, ... when that folder already holds files."""
    base = REPO / "benchmarks" / "results" / f"{kind}-{_dt.date.today().isoformat()}"
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def load_average() -> dict:
    """`uptime`'s line and the 1/5/15-minute load averages."""
    try:
        line = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        line = ""
    return {"uptime": line, "load_avg": [round(v, 2) for v in os.getloadavg()],
            "time": _dt.datetime.now().isoformat(timespec="seconds")}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(device: str | None = None) -> dict:
    """Platform, CPU count, torch version and threads, the device and the git commit of this run."""
    import torch
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
            "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def evaluator_info(ev) -> dict:
    """Which evaluator scored a benchmark: its path, file time and the figures its trainer stored with it."""
    path = Path(ev.path)
    keep = ("train_seconds", "steps", "epochs_done", "held_out_accuracy", "held_out_accuracy_round_trip", "data_key",
            "device", "torch_threads")
    return {"path": str(path), "size": path.stat().st_size,
            "modified": _dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds"),
            **{k: ev.info[k] for k in keep if k in ev.info}}


def ground_truth_accuracy(ev, root: Path, split: str, n: int) -> float | None:
    """The evaluator's accuracy on root/<split>_gt/0..n-1.png (the renders the labels describe): the ceiling a
    perfect generator would reach; None when that folder is missing or incomplete."""
    from lab6.data import load_image_folder
    folder = Path(root) / f"{split}_gt"
    if not all((folder / f"{i}.png").is_file() for i in range(n)):
        return None
    from lab6.data import CourseData
    sets = CourseData(root).label_sets(split)[:n]
    hits, total = ev.score(load_image_folder(folder, n), sets)
    return hits / total


def machine_line(info: dict, load: dict) -> str:
    """One line naming the machine, for the printed report."""
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    omp = ", ".join(f"{k.upper()}={info[k]}" for k in ("omp_wait_policy", "gomp_spincount") if info.get(k))
    return (f"machine: {info['platform']}, {info['cpu_count']} CPUs{gpu}, torch {info['torch']} "
            f"({info['torch_threads']} threads{', ' + omp if omp else ''}) on {info['device']}; "
            f"load average {load['load_avg']}")


def format_table(header: list[str], rows: list[list], align: str | None = None) -> str:
    """A plain-text table: columns as wide as their widest cell; `align` per column ('l' or 'r')."""
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """Write a CSV file atomically."""
    from lab6.io import write_text
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text(path, buf.getvalue())


def run_main(main, argv=None) -> int:
    """Call main(argv); a lab6 user error becomes `error: ...` on stderr and exit status 1, as in the CLI."""
    from lab6.errors import Lab6Error
    try:
        return int(main(argv) or 0)
    except Lab6Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
