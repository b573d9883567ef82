"""Shared fixtures: a tiny dataset in the course layout, written to a temp folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lab6 import labels as L

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in every test: tiny tensors run faster so, and on a shared 2-core box two threads
    waiting on each other made steps up to 60x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_course_layout(root: Path, n: int = 12, size: int = 64, seed: int = 0) -> Path:
    """Write n random-coloured images and valid label files in the course layout under `root`."""
    rng = np.random.default_rng(seed)
    (root / "iclevr").mkdir(parents=True, exist_ok=True)
    train = {}
    for i in range(n):
        k = 1 + i % 3
        names = [L.OBJECTS[j] for j in rng.choice(24, size=k, replace=False)]
        fname = f"img_{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "iclevr" / fname)
        train[fname] = names
    (root / "objects.json").write_text(json.dumps(L.OBJECT_TO_INDEX))
    (root / "train.json").write_text(json.dumps(train))
    tests = [list(v) for v in list(train.values())[:8]]
    (root / "test.json").write_text(json.dumps(tests))
    (root / "new_test.json").write_text(json.dumps(tests[::-1]))
    return root


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Good inputs of the CLI tests: a tiny dataset, a 2-step tiny run, an evaluator (tests/cli_world.py)."""
    from tests.cli_world import build_world
    yield from build_world(tmp_path_factory)


@pytest.fixture
def course_dir(tmp_path) -> Path:
    return write_course_layout(tmp_path / "ds")


@pytest.fixture
def course_labels_dir() -> Path:
    """The course's published label files, from $LAB6_COURSE_LABELS (set by .ci/run)."""
    path = os.environ.get("LAB6_COURSE_LABELS")
    if not path:
        pytest.skip("LAB6_COURSE_LABELS is not set: the course label files were not checked")
    return Path(path)
