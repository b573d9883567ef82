"""The workbook end to end: `lab6 run --profile tiny` on a tiny rendered dataset, and nbval on the notebooks."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from lab6.data import TEST_SPLITS, load_image_folder
from lab6.errors import Lab6Error
from lab6.evaluator import Evaluator
from lab6.run import NOTEBOOK_DIR, NOTEBOOKS
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A 12-scene synthetic dataset with a tiny (quickly trained) evaluator beside it."""
    from lab6.evaluator_train import EvaluatorTrainConfig, train_evaluator
    from lab6.synth import write_dataset

    root = tmp_path_factory.mktemp("tiny") / "ds"
    write_dataset(root, scenes=12, seed=0, workers=1, progress=False)
    train_evaluator(root, config=EvaluatorTrainConfig(epochs=1, width=4, max_minutes=0.5, val_images=4,
                                                       batch_size=16, threads=1), progress=False)
    return root


def lab6_cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "lab6", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=_env())


def _env():
    import os
    return dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    r = lab6_cli("run", "--profile", "tiny", "--data-root", str(tiny_data), "--out", str(run_dir), "--device", "cpu",
                 *RUN_ARGS)
    return run_dir, r


RUN_ARGS = ("--max-steps", "12", "--max-minutes", "30", "--guidance", "1.5", "--no-ddpm-1000")


def test_run_writes_every_deliverable(tiny_run):
    run_dir, r = tiny_run
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for name in NOTEBOOKS:
        assert f"{name}: done" in r.stdout
        nb = nbformat.read(run_dir / "notebooks" / name, as_version=4)
        assert not nb.metadata["papermill"]["exception"] and nb.metadata["papermill"]["end_time"]
    for split in ("test", "new_test"):
        images = sorted((run_dir / "images" / split).glob("*.png"))
        assert len(images) == 32 and Image.open(images[0]).size == (64, 64)
        assert Image.open(run_dir / "images" / f"{split}_grid.png").size == (8 * 66 + 2, 4 * 66 + 2)
    assert Image.open(run_dir / "denoising.png").size[0] > 8 * 64
    assert "03_training.ipynb · cell 1/" in r.stdout  # progress: each cell as it starts
    assert "Kernel is running over TCP" not in r.stdout + r.stderr


def test_report_follows_the_lab_structure_and_stands_alone(tiny_run, tiny_data):
    run_dir, r = tiny_run
    assert r.returncode == 0
    report = (run_dir / "report.html").read_text()
    for section in ("1. Introduction", "2. Implementation", "3. Hyperparameters", "4. Results", "5. Ablations",
                    "6. Methods compared", "7. Discussion", "Training curve", "The 8×4 grids", "Denoising process",
                    "ground truth"):
        assert section in report, section
    assert "distance to the synthetic renderer" not in report  # synthetic data: its renders are the ground truth
    assert report.count("<svg") >= 4  # equations drawn offline, no MathJax
    assert "evaluator.pth" in report  # names the evaluator of the data root
    assert 'title="0: ' in report  # every grid image carries its labels
    for leak in (str(REPO), str(run_dir), str(tiny_data), "PosixPath(", "<script", "<link"):
        assert leak not in report, leak
    assert not re.search(r"""(src|href)=["']?https?:""", report)  # nothing fetched from a network
    from lab6.report import find_chromium
    if find_chromium():
        assert (run_dir / "report.pdf").read_bytes()[:5] == b"%PDF-" and "[report]" in r.stdout
    else:
        assert "report.pdf not written: no Chromium found" in r.stdout


def test_no_printed_page_but_the_last_is_more_than_a_third_blank(tiny_run, tmp_path):
    """A section kept whole and moved to the next page leaves a gap: sections longer than a page must flow."""
    run_dir, r = tiny_run
    pdf = run_dir / "report.pdf"
    if not pdf.exists() or shutil.which("pdftoppm") is None:
        pytest.skip("needs Chromium's report.pdf and poppler's pdftoppm")
    subprocess.run(["pdftoppm", "-r", "30", "-gray", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 5
    for page in pages[:-1]:
        ink = (np.asarray(Image.open(page).convert("L")) < 235).any(axis=1)   # (H,) rows with anything drawn
        longest = max(len(run) for run in "".join("x" if i else " " for i in ink).split("x"))
        assert longest <= len(ink) / 3, f"{page.name}: {longest / len(ink):.0%} of the page blank in one stretch"


def test_run_metrics_are_recorded_and_consistent(tiny_run, tiny_data):
    run_dir, r = tiny_run
    assert r.returncode == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["01_data"]["train_images"] == 36
    assert m["01_data"]["splits"]["unseen_test"]["unseen_pairs"] > 0
    assert m["01_data"]["splits"]["new_test"]["repeated_colour"] + m["01_data"]["splits"]["new_test"]["repeated_shape"] >= 32
    assert m["03_training"]["steps"] == 12 and m["03_training"]["final_loss"] > 0  # --max-steps, not the profile's 20
    injected = nbformat.read(run_dir / "notebooks" / "03_training.ipynb", as_version=4).metadata["papermill"]["parameters"]
    assert (injected["max_steps"], injected["max_minutes"]) == (12, 30.0)  # the first limit ends training
    for split in TEST_SPLITS:
        d = m["04_sampling"]["deliverables"][split]
        assert d["guidance"] == 1.5  # `lab6 run --guidance` reaches notebook 04 ...
        assert 0 <= d["hits"] <= d["labels"] and d["accuracy"] == pytest.approx(d["hits"] / d["labels"], abs=1e-4)
        metrics_file = json.loads((run_dir / "images" / f"{split}_metrics.json").read_text())
        assert metrics_file["accuracy"] == pytest.approx(d["accuracy"], abs=1e-4)
        # ... and 05: it re-samples seed 0 with the same settings, so the same images and the same accuracy
        res = m["05_results"]["accuracy"][split]
        assert res["accuracy (seed 0)"] == pytest.approx(d["accuracy"], abs=1e-6)
        assert res["min"] <= res["mean over 3 seeds"] <= res["max"]
        assert 0 <= m["05_results"]["ablation"][split]["no labels"] <= 1
        # the evaluator's ceiling: its accuracy on the dataset's ground-truth renders of the same label sets
        sets = json.loads((tiny_data / f"{split}.json").read_text())
        gt = Evaluator(tiny_data / "evaluator.pth").accuracy(load_image_folder(tiny_data / f"{split}_gt", len(sets)), sets)
        assert res["evaluator ceiling"] == pytest.approx(gt, abs=1e-6)
    assert set(m["04_sampling"]["samplers"]) == {"DDIM-50", "DDIM-25", "DPM++-25", "DPM++-20", "DPM++-10",
                                                     "SDE-DPM++-25"}


def test_rerun_skips_complete_notebooks(tiny_run, tiny_data):
    run_dir, first = tiny_run
    assert first.returncode == 0
    r = lab6_cli("run", "--profile", "tiny", "--data-root", str(tiny_data), "--out", str(run_dir), "--device", "cpu",
                 *RUN_ARGS)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("already complete, skipped") == len(NOTEBOOKS)


def test_failing_notebook_names_itself_and_keeps_the_partial_notebook(tiny_data, tmp_path, monkeypatch):
    from lab6 import run as R

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "tiny"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "nbs").mkdir()
    nbformat.write(nb, tmp_path / "nbs" / "01_fail.ipynb")
    monkeypatch.setattr(R, "NOTEBOOK_DIR", tmp_path / "nbs")
    monkeypatch.setattr(R, "NOTEBOOKS", ("01_fail.ipynb",))
    cfg = R.RunConfig(profile="tiny", data_root=str(tiny_data), run_dir=str(tmp_path / "run"), device="cpu")
    with pytest.raises(Lab6Error, match=r"notebooks/01_fail.ipynb failed in cell \d+: ValueError: boom"):
        R.run_pipeline(cfg)
    assert (tmp_path / "run" / "notebooks" / "01_fail.ipynb").exists()
    assert not (tmp_path / "run" / "report.html").exists()


def test_nbval_checked_outputs(tiny_data, tmp_path):
    """nbval (--nbval-lax) re-executes each committed notebook with tiny parameters and compares the
    outputs of the cells tagged nbval-check-output with the committed ones."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    params = {"profile": "tiny", "data_root": str(tiny_data), "run_dir": str(tmp_path / "run"), "device": "cpu",
              "compare_samplers": False, "seeds": [0], "guidance_scales": [1.0, 2.0]}
    copies = []
    for name in NOTEBOOKS:
        nb = load_notebook_node(str(NOTEBOOK_DIR / name))  # adds the metadata papermill expects
        declared = {k for k in params if f"\n{k} = " in "\n" + _params_source(nb)}
        nb = parameterize_notebook(nb, {k: params[k] for k in declared})
        nbformat.write(nb, tmp_path / name)
        copies.append(str(tmp_path / name))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                        "--nbval-current-env", "--nbval-cell-timeout=600",
                        "--nbval-sanitize-with", str(NOTEBOOK_DIR / "nbval_sanitize.cfg"), *copies],
                       cwd=REPO, capture_output=True, text=True, timeout=1200, env=_env())
    assert r.returncode == 0, r.stdout[-4000:]
    assert "failed" not in r.stdout.splitlines()[-1]


def _params_source(nb) -> str:
    return next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))


def test_run_fine_tunes_a_given_model_on_a_second_look(tiny_data, tmp_path):
    """`lab6 run --init-from` on a stand-in for the course's data (the second look, 320x240 RGBA, its judge as
    checkpoint.pth): notebook 03 starts from the given model, and the report and metrics say so."""
    from lab6.synth import write_dataset

    standin = tmp_path / "standin"
    write_dataset(standin, scenes=12, seed=1, workers=1, progress=False, look="second", size="320x240", rgba=True,
                  evaluator=tiny_data / "evaluator.pth")
    assert Image.open(next((standin / "iclevr").glob("*.png"))).mode == "RGBA"
    start = tmp_path / "start"
    r = lab6_cli("train", "--profile", "tiny", "--data", str(tiny_data), "--out", str(start), "--max-steps", "2",
                 "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = tmp_path / "run"
    r = lab6_cli("run", "--profile", "tiny", "--data-root", str(standin), "--out", str(run_dir), "--device", "cpu",
                 "--init-from", str(start / "pipeline"), "--max-steps", "4", "--guidance", "1.5", "--no-ddpm-1000")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["03_training"]["init_from"] == str((start / "pipeline").resolve()) and m["03_training"]["steps"] == 4
    stages = json.loads((run_dir / "train" / "pipeline" / "stages.json").read_text())
    assert len(stages) == 2 and stages[-1]["init_from"]  # the given model's stage, then this run's
    box = (run_dir / "report.html").read_text().split("class='provenance'", 1)[1].split("</div>", 1)[0]
    assert "4 of 4 planned steps" in box and "starting from" in box
    bad = lab6_cli("run", "--profile", "tiny", "--data-root", str(standin), "--out", str(tmp_path / "bad"),
                   "--init-from", str(tmp_path / "nowhere"))
    assert bad.returncode != 0 and "--init-from" in bad.stderr and not (tmp_path / "bad").exists()
