"""Models that travel: an export carries its code and a model card, and loads with plain diffusers."""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lab6 import labels as L
from lab6 import model as M
from lab6 import pipeline as P
from lab6.card import model_card, validation_scores
from lab6.checkpoints import build_pipeline
from lab6.config import PROFILES
from lab6.model import ConditionalUNet, build_model
from lab6.pipeline import ConditionalDDPMPipeline
from lab6.sample import generators, load_pipeline
from tests.conftest import REPO

SETS = [["red sphere"], ["cyan cube", "gray cylinder"]]


@pytest.fixture
def export(tmp_path) -> Path:
    """A tiny pipeline saved with save_pretrained (as every lab6 export is)."""
    torch.manual_seed(0)
    pipe = build_pipeline(build_model(PROFILES["tiny"].model).eval(), PROFILES["tiny"])
    pipe.save_pretrained(tmp_path / "export")
    return tmp_path / "export"


def _images(pipe) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(labels=SETS, num_inference_steps=3, generator=generators(0, len(SETS)), output_type="pt").images


@pytest.mark.parametrize("module", [P, M])
def test_copied_modules_import_only_torch_diffusers_numpy_pil_and_the_stdlib(module):
    allowed = {"torch", "diffusers", "numpy", "PIL", *sys.stdlib_module_names}
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {"." * n.level + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {name for name in imported if name.partition(".")[0] not in allowed} == set()


def test_the_copies_repeat_lab6_vocabulary():
    assert P.OBJECTS == L.OBJECTS and P.MAX_OBJECTS == L.MAX_OBJECTS
    assert (M.NUM_COLOURS, M.NUM_SHAPES, M.MAX_OBJECTS) == (len(L.COLOURS), len(L.SHAPES), L.MAX_OBJECTS)


def test_an_export_carries_lab6_code_byte_for_byte(export):
    assert (export / P.PIPELINE_FILE).read_bytes() == Path(P.__file__).read_bytes()
    assert (export / "unet" / P.UNET_FILE).read_bytes() == Path(M.__file__).read_bytes()
    index = json.loads((export / "model_index.json").read_text())
    assert index["_class_name"] == ["lab6_pipeline", "ConditionalDDPMPipeline"]
    assert index["unet"] == ["lab6_model", "ConditionalUNet"]


def test_lab6_reads_new_and_old_exports_with_its_own_classes(export, tmp_path):
    """A new export and the same weights in the old layout (model_index naming lab6.model, no code) load as lab6's
    classes, by from_pretrained and by load_pipeline, and draw the same images."""
    old = tmp_path / "old"
    shutil.copytree(export, old)
    (old / P.PIPELINE_FILE).unlink()
    (old / "unet" / P.UNET_FILE).unlink()
    index = json.loads((old / "model_index.json").read_text())
    (old / "model_index.json").write_text(json.dumps(index | {"_class_name": "ConditionalDDPMPipeline",
                                                              "unet": ["lab6.model", "ConditionalUNet"]}))
    images = []
    for folder in (export, old):
        for pipe in (ConditionalDDPMPipeline.from_pretrained(folder), load_pipeline(folder, device="cpu")):
            assert type(pipe) is ConditionalDDPMPipeline and type(pipe.unet) is ConditionalUNet
            assert pipe.config.default_num_inference_steps == PROFILES["tiny"].sample.num_steps
            images.append(_images(pipe))
    assert all(torch.equal(images[0], x) for x in images[1:])


def test_plain_diffusers_loads_an_export_where_lab6_cannot_be_imported(export, tmp_path):
    code = f"""
import sys
sys.modules["lab6"] = None  # lab6 is installed in this venv: make sure nothing of it is used
try:
    import lab6
    sys.exit("lab6 was imported")
except ImportError:
    pass
import torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(export)!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
image = pipe(labels=[["red sphere", "cyan cube"]], num_inference_steps=3,
             generator=torch.Generator().manual_seed(0)).images[0]
print(type(pipe).__module__, type(pipe.unet).__module__, image.size, image.mode)
try:
    pipe(labels=[["red spere"]])
except ValueError as e:
    print(e)
"""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0] == ("diffusers_modules.local.lab6_pipeline diffusers_modules.local.lab6_model (64, 64) RGB")
    assert lines[1].startswith("labels[0][0]: unknown object 'red spere'; did you mean 'red sphere'")


def test_a_training_export_has_a_model_card_and_loads_with_plain_diffusers(course_dir, tmp_path):
    from lab6.config import load_config
    from lab6.train import train
    run = train(load_config("tiny", output_dir=str(tmp_path / "run"), data_root=str(course_dir), validate_num=0,
                            train={"max_steps": 2}), progress=False)
    card = (run / "pipeline" / "README.md").read_text()
    for part in ("library_name: diffusers", "# lab6 `tiny`", "2 steps at batch", "learning rate",
                 "mixed precision bf16", "recorded no scores", "trust_remote_code=True",
                 "ConditionalDDPMPipeline.from_pretrained"):
        assert part in card, part
    assert (run / "pipeline" / P.PIPELINE_FILE).is_file() and (run / "pipeline" / "unet" / P.UNET_FILE).is_file()


def test_the_card_shows_the_scores_a_run_recorded(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 5, "loss": 0.1}\n{"step": 10, "test_acc": 0.5, "new_test_acc": 0.25}\n'
                       '{"step": 12, "loss": 0.1}\n{"step": 1')  # the last line cut by a kill
    assert validation_scores(metrics) == (10, {"test": 0.5, "new_test": 0.25})
    assert validation_scores(tmp_path / "missing.jsonl") is None
    card = model_card(PROFILES["tiny"], 12, {"top-k accuracy at step 10": {"test": 0.5, "new_test": 0.25}},
                      "the evaluator")
    assert "| top-k accuracy at step 10 | 0.500 | 0.250 |" in card and "Read by the evaluator." in card
    assert "shift_patches" not in card                              # the tiny profile has no patches
    quick = PROFILES["quick"]
    shifted, fixed = (dataclasses.replace(quick, sample=dataclasses.replace(quick.sample, shift_patches=on))
                      for on in (True, False))
    assert "shift_patches" not in model_card(fixed)
    assert "the patch grid moved by a few pixels at every step (`shift_patches`)" in model_card(shifted)
    only = dataclasses.replace(quick, model=dataclasses.replace(quick.model, object_tokens=64, multi_hot=False,
                                                                tokens_every_level=False))
    assert "object tokens (64 wide, the only condition)" in model_card(only)
    every = dataclasses.replace(quick, model=dataclasses.replace(only.model, tokens_every_level=True))
    assert "object tokens (64 wide, the only condition, read at every level)" in model_card(every)


@pytest.mark.parametrize("name", ["quick", "quick-multihot"])
def test_the_shipped_model_travels(name):
    """pretrained/quick and the multi-hot model it replaced are in the new layout, with their code identical to
    lab6's, a card, and fp16 weights under 25 MB."""
    folder = REPO / "pretrained" / name
    assert (folder / P.PIPELINE_FILE).read_bytes() == Path(P.__file__).read_bytes()
    assert (folder / "unet" / P.UNET_FILE).read_bytes() == Path(M.__file__).read_bytes()
    assert "trust_remote_code=True" in (folder / "README.md").read_text()
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 25e6
