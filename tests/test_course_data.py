"""The course's own files in a data root switch `lab6 run` to them: 320x240-like RGBA PNGs and checkpoint.pth."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lab6 import labels as L
from lab6.data import CourseData, IclevrDataset, load_image
from lab6.evaluator import SHIPPED_EVALUATOR, Evaluator, ResNet18, find_evaluator, load_checkpoint
from lab6.report import shown_path
from lab6.run import NOTEBOOKS
from tests.conftest import REPO

# torchvision.models.resnet18's state_dict keys (torchvision is not importable beside this torch), a few of each kind
TORCHVISION_KEYS = ("conv1.weight", "bn1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
                    "layer1.0.conv1.weight", "layer1.1.bn2.running_var", "layer2.0.downsample.0.weight",
                    "layer2.0.downsample.1.running_mean", "layer4.1.conv2.weight", "fc.0.weight", "fc.0.bias")


def ranking_of(sets: list[list[str]]) -> torch.Tensor:
    """The 24 classes, most frequent in `sets` first (ties by index): the fixed top-k of the test checkpoint."""
    return torch.argsort(L.encode_batch(sets).sum(0), descending=True, stable=True)


def expected_hits(sets: list[list[str]], ranking: torch.Tensor) -> int:
    """Hits of an evaluator whose top-k is ranking[:k] for every image, counted by hand."""
    return sum(len(set(ranking[:len(s)].tolist()) & {L.OBJECT_TO_INDEX[n] for n in s}) for s in sets)


def write_course_files(root: Path, n: int = 24, size: tuple[int, int] = (80, 60), seed: int = 0) -> Path:
    """The course's layout: non-square RGBA PNGs (as i-CLEVR's 320x240 ones, alpha opaque), objects.json, train.json,
    test.json and new_test.json of 32 sets each, and checkpoint.pth = {'model': resnet18 state_dict}.

    The checkpoint's fc has zero weights and distinct biases, so whatever the image its top-k is the k classes most
    frequent in test.json: any score it gives is known exactly, and tells it apart from every other evaluator."""
    rng = np.random.default_rng(seed)
    (root / "iclevr").mkdir(parents=True)
    w, h = size
    train = {}
    for i in range(n):
        names = [L.OBJECTS[j] for j in rng.choice(24, size=1 + i % 3, replace=False)]
        rgba = np.full((h, w, 4), 255, np.uint8)
        rgba[..., :3] = rng.integers(112, 128, (h, w, 1), dtype=np.uint8)  # grey floor
        for _ in names:  # one coloured box per object
            x, y = rng.integers(0, w - 12), rng.integers(0, h - 12)
            rgba[y:y + 12, x:x + 12, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
        fname = f"CLEVR_train_{i:06d}_0.png"
        Image.fromarray(rgba, "RGBA").save(root / "iclevr" / fname)
        train[fname] = names
    sets = lambda k: [[L.OBJECTS[j] for j in rng.choice(24, size=1 + i % 3, replace=False)] for i in range(k)]
    test = sets(32)
    (root / "objects.json").write_text(json.dumps(L.OBJECT_TO_INDEX))
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps(test))
    (root / "new_test.json").write_text(json.dumps(sets(32)))
    torch.manual_seed(seed)
    state = ResNet18().state_dict()  # same module names as torchvision's resnet18 with fc = Sequential(Linear, Sigmoid)
    assert all(k in state for k in TORCHVISION_KEYS) and tuple(state["fc.0.weight"].shape) == (24, 512)
    state["fc.0.weight"].zero_()
    state["fc.0.bias"][ranking_of(test)] = torch.linspace(3, -3, 24)
    torch.save({"model": state}, root / "checkpoint.pth")
    return root


def test_load_image_reads_a_non_square_rgba_png_as_the_course_transform_does(tmp_path):
    """RGBA -> RGB drops alpha (the course's `.convert("RGB")`), and 80x60 is squashed to 64x64 with colours kept."""
    left, right = (200, 30, 40), (20, 60, 220)
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[:, :40, :3], rgba[:, 40:, :3] = left, right
    rgba[..., 3] = np.arange(80, dtype=np.uint8)[None, :] * 3  # alpha 0..237: transparent pixels keep their RGB
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png", 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    # bicubic 80 -> 64 reaches 2.5 source pixels (2 output columns) across the edge at column 32
    assert (img[:, :30] == left).all() and (img[:, 34:] == right).all()
    edge = img[:, 30:34]
    assert not (edge == left).all() and not (edge == right).all()  # blended, not a nearest-neighbour copy
    expected = np.asarray(Image.fromarray(rgba[..., :3]).resize((64, 64), Image.Resampling.BICUBIC,
                                                                 reducing_gap=None))
    assert (img == expected).all()


def test_course_layout_opens_and_picks_the_course_evaluator(tmp_path):
    """The data root's checkpoint.pth is the evaluator, read in torchvision's key layout; images decode to 64x64."""
    root = write_course_files(tmp_path / "iclevr_course", n=4)
    assert CourseData(root).splits() == ["test", "new_test"]
    assert find_evaluator(data_root=root) == root / "checkpoint.pth" != SHIPPED_EVALUATOR
    assert "fc.0.weight" in load_checkpoint(root / "checkpoint.pth")["model"]
    ds = IclevrDataset(root, resolution=64, cache=False)
    assert tuple(ds.images.shape) == (4, 3, 64, 64) and ds.labels.sum(1).tolist() == [1, 2, 3, 1]
    sets = CourseData(root).label_sets("test")
    hits, total = Evaluator(root / "checkpoint.pth", device="cpu").score(torch.rand(32, 3, 64, 64) * 2 - 1, sets)
    assert (hits, total) == (expected_hits(sets, ranking_of(sets)), 63) and hits > 0


@pytest.mark.slow
def test_lab6_run_on_the_course_files(tmp_path):
    """`lab6 run --profile tiny` on the course layout: every notebook runs, the course's evaluator scores them."""
    root = write_course_files(tmp_path / "course")
    run_dir = tmp_path / "run"
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "lab6", "run", "--profile", "tiny", "--data-root", str(root),
                        "--out", str(run_dir), "--device", "cpu", "--max-steps", "12", "--no-ddpm-1000"],
                       cwd=REPO, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE"))
    print(f"lab6 run on the course layout: {time.time() - t0:.0f} s")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for name in NOTEBOOKS:
        assert f"{name}: done" in r.stdout
    report = (run_dir / "report.html").read_text()
    assert f"{root.name}/checkpoint.pth" in report and "pretrained/evaluator" not in report
    assert "trained live in this run" in report  # not the model shipped for the synthetic data
    assert "distance to the synthetic renderer" in report  # checker and FID references are this project's renders
    box = report.split("<div class='provenance'>", 1)[1].split("</div>", 1)[0]  # the provenance box, at the top
    assert f"the course's files in <code>{shown_path(root)}</code>" in box
    assert f"the course's evaluator <code>{shown_path(root / 'checkpoint.pth')}</code>" in box
    assert "NOT the course" not in report and "This run's training:</b> 12 of 12 planned steps" in box
    for split in ("test", "new_test"):
        images = sorted((run_dir / "images" / split).glob("*.png"))
        assert len(images) == 32
        for p in images:
            with Image.open(p) as im:
                assert (im.size, im.mode) == ((64, 64), "RGB"), p
    assert not (run_dir / "images" / "unseen_test").exists()  # the course has no unseen_test.json
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["01_data"]["train_images"] == 24
    ranking = ranking_of(CourseData(root).label_sets("test"))
    for split in ("test", "new_test"):  # scored by the data root's checkpoint: its fixed top-k, whatever was drawn
        sets = CourseData(root).label_sets(split)
        d = m["04_sampling"]["deliverables"][split]
        assert (d["hits"], d["labels"]) == (expected_hits(sets, ranking), sum(map(len, sets)))
        assert d["accuracy"] == pytest.approx(d["hits"] / d["labels"], abs=1e-4)
        assert m["05_results"]["accuracy"][split]["accuracy (seed 0)"] == pytest.approx(d["accuracy"], abs=1e-6)
