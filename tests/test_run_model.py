"""`lab6 run --model DIR`: a grader regenerates the figures and the report from a given model, without training."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nbformat
import pytest

from lab6.config import load_config
from lab6.report import NOT_THE_COURSE, shown_path
from tests.cli_world import files_under, resnet18_file, run_cli
from tests.conftest import REPO

SHIPPED = REPO / "pretrained" / "quick"


def fake_export(folder, config: str | None = None, weights: str = "diffusion_pytorch_model.safetensors"):
    """A folder laid out as an export (model_index.json, lab6_config.yaml, unet/<weights>); nothing in it loads."""
    (folder / "unet").mkdir(parents=True)
    shutil.copy(SHIPPED / "model_index.json", folder)
    if config is None:
        shutil.copy(SHIPPED / "lab6_config.yaml", folder)
    else:
        (folder / "lab6_config.yaml").write_text(config)
    (folder / "unet" / weights).write_bytes(b"\0" * 16)
    return folder


@pytest.mark.parametrize("case, says", [
    ("missing", "no such folder"),
    ("empty", "not a lab6 export (no model_index.json or lab6_config.yaml)"),
    ("bad-config", "unreadable config"),
    ("pickled-weights", "unet/ holds only diffusion_pytorch_model.bin (pickled"),
])
def test_a_bad_model_folder_fails_in_one_line_and_writes_nothing(case, says, tmp_path, capsys):
    folder = tmp_path / case
    if case == "empty":
        folder.mkdir()
    elif case == "bad-config":
        fake_export(folder, config="model: [unclosed\n")
    elif case == "pickled-weights":
        fake_export(folder, weights="diffusion_pytorch_model.bin")
    before = files_under(tmp_path)
    rc, err = run_cli(["run", "--model", folder, "--out", tmp_path / "out", "--device", "cpu"], capsys)
    assert rc == 1 and err.count("\n") == 1, err
    assert f"--model {folder}" in err and says in err, err
    assert "model_index.json, lab6_config.yaml and unet/diffusion_pytorch_model.safetensors" in err
    assert files_under(tmp_path) == before


def test_profile_and_model_together_are_refused(tmp_path, capsys):
    rc, err = run_cli(["run", "--model", SHIPPED, "--profile", "tiny", "--out", tmp_path / "out"], capsys)
    assert rc == 1 and "--profile: leave it out with --model" in err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_lab6_run_grades_a_given_model_without_training(tmp_path):
    """A 2-step tiny model, graded on tiny synthetic renders: notebooks 01, 02, 04 and 05 run, 03 does not, and the
    report names the model, says training was skipped and warns that these are not the course's figures."""
    from lab6.synth import write_dataset
    from lab6.train import train
    ds = tmp_path / "ds"
    write_dataset(ds, scenes=12, seed=0, workers=1, progress=False)
    resnet18_file(ds / "evaluator.pth")  # all-zero weights: loads and scores, says nothing
    model = train(load_config("tiny", output_dir=str(tmp_path / "student"), data_root=str(ds), validate_num=0,
                              train={"max_steps": 2}), progress=False) / "pipeline"
    out = tmp_path / "graded"
    r = subprocess.run([sys.executable, "-m", "lab6", "run", "--model", str(model), "--data-root", str(ds),
                        "--out", str(out), "--device", "cpu", "--no-ddpm-1000"], cwd=REPO, capture_output=True,
                       text=True, timeout=1200, env=dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "03_training.ipynb: skipped (the model is given" in r.stdout
    assert not (out / "notebooks" / "03_training.ipynb").exists() and not (out / "train").exists()
    for name in ("01_data.ipynb", "02_forward_noising.ipynb", "04_sampling.ipynb", "05_results.ipynb"):
        assert f"{name}: done" in r.stdout
    injected = nbformat.read(out / "notebooks" / "04_sampling.ipynb", as_version=4).metadata["papermill"]["parameters"]
    assert (injected["profile"], injected["model"]) == ("tiny", str(model.resolve()))  # the model's own profile
    m = json.loads((out / "metrics.json").read_text())
    assert m["04_sampling"]["model"] == str(model.resolve()) and "03_training" not in m
    report = (out / "report.html").read_text()
    assert f"the given model <code>{shown_path(model)}</code>" in report
    assert "Notebook 03 (training) was not run" in report and "Training curve" not in report
    assert NOT_THE_COURSE.replace("'", "&#x27;") in report  # this project's renders, not the course's files
    assert "stage 1" in report  # the model's stages.json, in the hyperparameters
