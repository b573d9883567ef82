"""The shared world of the CLI tests (a tiny dataset, a 2-step run, an evaluator) and the helpers they share.

`tests/conftest.py` serves `build_world` as the session fixture `world`; test_cli_errors.py, test_config_errors.py,
test_interrupt_and_resume.py and test_determinism.py use it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image

from lab6.cli import main
from lab6.config import load_config
from lab6.train import train
from tests.conftest import REPO, write_course_layout


def build_world(tmp_path_factory):
    """Yield good inputs shared by every row: a tiny dataset, a 2-step tiny run (checkpoints and export), an evaluator;
    and the CLI subprocesses of two tests, started now so that their start-up overlaps the in-process rows."""
    root = tmp_path_factory.mktemp("world")
    ds = write_course_layout(root / "ds", n=12)
    run = train(load_config("tiny", output_dir=str(root / "run"), data_root=str(ds), validate_num=0,
                            train={"max_steps": 2, "checkpoint_every": 1}), progress=False)
    evaluator = resnet18_file(root / "evaluator.pth")  # all-zero weights: loads and scores, says nothing
    images = root / "images"  # 8 readable images for the 8 sets of ds/test.json
    images.mkdir()
    for i in range(8):
        Image.new("RGB", (64, 64), (10 * i, 80, 160)).save(images / f"{i}.png")
    w = SimpleNamespace(root=root, ds=ds, run=run, ckpt=run / "checkpoint-2", export=run / "pipeline",
                        evaluator=evaluator, images=images, labels=ds / "test.json")
    w.bg = tmp_path_factory.mktemp("background")  # outside root: the rows check root for stray files
    bad = write_file(w.bg, "train.json", '{"a_0.png": ["red cube", "red cube"]}')
    w.procs = {name: subprocess.Popen([sys.executable, "-m", "lab6", *argv], cwd=w.bg, env=subprocess_env(), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name, argv in (("plain", ["synth", "--out", str(w.bg / "o"), "--like", str(bad)]),
                                  ("debug", ["--debug", "synth", "--out", str(w.bg / "o"), "--like", str(bad)]),
                                  ("sample", [*sample_args(w), "--out", str(w.bg / "a")]))}
    yield w
    for proc in w.procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def sample_args(w) -> list[str]:
    return ["sample", "--model", str(w.run), "--labels", str(w.labels), "--steps", "4", "--seed", "7",
            "--device", "cpu", "--no-progress"]


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Exit code and stderr of a background CLI subprocess."""
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def subprocess_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def files_under(*roots: Path) -> dict[str, int]:
    """Every path under roots with its size (folders: -1): a before/after picture of the disk."""
    return {str(p): (p.stat().st_size if p.is_file() else -1) for r in roots for p in r.rglob("*")}


def run_cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    return rc, capsys.readouterr().err


def write_file(tmp: Path, name: str, text: str | bytes) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def cut_file(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def resnet18_file(path: Path, num_classes: int = 24) -> Path:
    """An evaluator checkpoint in the course format with all-zero weights."""
    from lab6.evaluator import ResNet18
    with torch.device("meta"):
        sd = ResNet18(num_classes=num_classes).state_dict()
    torch.save({"model": {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in sd.items()}}, path)
    return path
