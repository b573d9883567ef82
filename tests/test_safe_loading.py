"""Loading is safe by default: a checkpoint that pickles Python objects runs no code unless the user opts in."""
from __future__ import annotations

import json
import pathlib
import random

import numpy as np
import pytest
import torch
from PIL import Image

from lab6 import checkpoints as C
from lab6 import cli
from lab6 import evaluator as E
from lab6.errors import CheckpointError


class Marker:
    """Unpickling it creates a file: proof that the full unpickler ran."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def course_state() -> dict:
    with torch.device("meta"):
        sd = E.ResNet18().state_dict()
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in sd.items()}


@pytest.fixture
def pickled(tmp_path, monkeypatch):
    """(checkpoint holding a Marker beside the course's weights, the marker file it would create)."""
    monkeypatch.setenv(E.TRUST_ENV, "0")  # recorded, so the opt-in of a test never leaks into the next
    marker = tmp_path / "code-ran"
    path = tmp_path / "evaluator.pth"
    torch.save({"model": course_state(), "extra": Marker(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_a_pickled_object_is_refused_by_default_and_runs_nothing(pickled):
    path, marker = pickled
    with pytest.raises(CheckpointError) as info:
        E.load_checkpoint(path)
    text = str(info.value)
    assert str(path) in text and "pickled Python objects" in text and "\n" not in text
    assert "--trust-checkpoint" in text and "LAB6_TRUST_CHECKPOINTS=1" in text
    assert not marker.exists()


def test_the_environment_opt_in_uses_the_full_unpickler(pickled, monkeypatch):
    path, marker = pickled
    monkeypatch.setenv(E.TRUST_ENV, "1")
    with pytest.warns(UserWarning, match="weights_only=False"):
        ckpt = E.load_checkpoint(path)
    assert "conv1.weight" in ckpt["model"] and marker.exists()


def test_the_cli_refuses_then_loads_with_trust_checkpoint(pickled, tmp_path, capsys):
    path, marker = pickled
    (tmp_path / "labels.json").write_text(json.dumps([["red cube"], ["blue sphere", "gray cube"]]))
    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (20 * i, 90, 150)).save(tmp_path / "images" / f"{i}.png")
    argv = ["evaluate", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels.json"),
            "--evaluator", str(path), "--device", "cpu"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "--trust-checkpoint" in err
    assert not marker.exists()
    with pytest.warns(UserWarning):
        assert cli.main([*argv, "--trust-checkpoint"]) == 0
    assert marker.exists() and "accuracy:" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["evaluate", "sample", "run", "train", "train-evaluator"])
def test_every_command_that_loads_an_evaluator_takes_the_opt_in(command):
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert "--trust-checkpoint" in sub.choices[command].format_help()


def test_resume_files_load_without_the_full_unpickler(tmp_path):
    """Random states and LR-scheduler state round-trip through weights_only=True, the older numpy form too;
    a resume file that pickles an object is refused, naming it, and runs nothing."""
    g = torch.Generator().manual_seed(3)
    torch.save(C._rng_state(g), tmp_path / "new.pt")
    torch.save({**C._rng_state(g), "numpy": np.random.get_state()}, tmp_path / "old.pt")  # lab6 before the fix
    for name in ("new.pt", "old.pt"):
        state = C._torch_load(tmp_path / name)
        C._set_rng_state(state, torch.Generator())
        assert (np.random.get_state()[1] == np.asarray(state["numpy"][1])).all()
        assert random.getstate() == state["python"]
    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    torch.save({"base_lrs": [1e-3], "lr_lambdas": [Marker(marker)]}, ckpt / "lr_scheduler.pt")
    with pytest.raises(CheckpointError) as info:
        C._torch_load(ckpt / "lr_scheduler.pt")
    text = str(info.value)
    assert "lr_scheduler.pt" in text and "pickled Python objects" in text and "\n" not in text
    assert f"--init-from {ckpt / 'ema'}" in text and not marker.exists()
