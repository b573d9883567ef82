"""stages.json: how a model was trained, every stage, written by `lab6 train` and read by the card and the report."""
from __future__ import annotations

import json

import pytest

from lab6.config import load_config
from lab6.errors import CheckpointError
from lab6.records import STAGES_FILE, describe_stage, read_stages, run_speed
from lab6.train import train
from tests.conftest import REPO

STAGE_KEYS = {"steps", "images", "batch_size", "lr", "lr_scheduler", "precision", "device", "minutes", "img_per_s",
              "init_from", "profile", "recipe", "date"}


def test_a_run_records_its_stage_and_a_fine_tune_appends_its_own(course_dir, tmp_path):
    first = train(load_config("tiny", output_dir=str(tmp_path / "a"), data_root=str(course_dir), validate_num=0,
                              train={"max_steps": 2}), progress=False, recipe="my-recipe.yaml")
    stages = json.loads((first / "pipeline" / STAGES_FILE).read_text())
    assert len(stages) == 1 and STAGE_KEYS <= set(stages[0])
    st = stages[0]
    assert (st["steps"], st["images"], st["batch_size"]) == (2, 16, 8)
    assert st["precision"] == "fp32" and st["device"].startswith("CPU")  # the profile says bf16: CUDA only
    assert (st["recipe"], st["init_from"], st["profile"]) == ("my-recipe.yaml", None, "tiny")
    assert describe_stage(st) in (first / "pipeline" / "README.md").read_text()
    second = train(load_config("tiny", output_dir=str(tmp_path / "b"), data_root=str(course_dir), validate_num=0,
                               train={"max_steps": 3, "lr": 1e-3, "init_from": str(first / "pipeline")}),
                   progress=False)
    stages2 = read_stages(second / "pipeline")
    assert stages2[0] == st and len(stages2) == 2
    assert (stages2[1]["steps"], stages2[1]["lr"], stages2[1]["init_from"]) == (3, 1e-3, str(first / "pipeline"))


def test_the_shipped_model_lists_every_chunk_with_its_log():
    """pretrained/quick: CPU chunks from random weights, each started from the one before, each log committed."""
    folder = REPO / "pretrained" / "quick"
    stages = read_stages(folder)
    assert len(stages) >= 5 and stages[0]["init_from"] is None
    assert all(s["init_from"] == f"pretrained/quick (chunk {k})" for k, s in enumerate(stages[1:], 1))
    assert all(s["images"] == s["steps"] * s["batch_size"] and s["precision"] == "fp32" and "CPU" in s["device"]
               for s in stages)
    card = (folder / "README.md").read_text()
    assert all(describe_stage(s) in card for s in stages)
    for k, s in enumerate(stages, 1):
        assert s["log"] == f"pretrained/quick/metrics-chunk{k}.jsonl"
        if k != 2:  # chunk 2's log runs on past the exported step 3000 into its divergence (TRAINING.md)
            assert run_speed(REPO / s["log"]) == (s["minutes"], s["img_per_s"])


def test_the_multi_hot_model_it_replaced_lists_its_three_stages():
    folder = REPO / "pretrained" / "quick-multihot"
    stages = read_stages(folder)
    assert [(s["steps"], s["batch_size"], s["precision"]) for s in stages] == [
        (3833, 256, "bf16"), (3706, 64, "fp32"), (5600, 64, "fp32")]
    assert all(s["images"] == s["steps"] * s["batch_size"] for s in stages)
    assert "H200" in stages[0]["device"] and all("CPU" in s["device"] for s in stages[1:])
    card = (folder / "README.md").read_text()
    assert all(describe_stage(s) in card for s in stages)
    assert run_speed(folder / "metrics.jsonl") == (stages[2]["minutes"], stages[2]["img_per_s"])


def test_a_resumed_run_adds_up_its_segments_and_a_bad_file_names_itself(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"step": 1, "img_per_s": 10, "elapsed_s": 60}\n'
                                      '{"step": 2, "img_per_s": 20, "elapsed_s": 120}\n'
                                      '{"step": 3, "img_per_s": 30, "elapsed_s": 30}\n{"st')
    assert run_speed(tmp_path / "m.jsonl") == (2.5, 20)
    (tmp_path / STAGES_FILE).write_text('{"steps": 3}')
    with pytest.raises(CheckpointError, match="stages.json: expected a JSON list"):
        read_stages(tmp_path)
    assert read_stages(tmp_path / "nothing") == [] and read_stages(None) == []
