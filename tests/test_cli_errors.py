"""Every bad input to the CLI gives one clear line, the right exit status, and leaves nothing behind.

Most rows call `lab6.cli.main` in-process (a CLI subprocess costs seconds of imports); a real subprocess is used
where the exit code or the traceback is the point.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lab6 import labels as L
from tests.cli_world import cut_file, files_under, finish, resnet18_file, run_cli, write_file


# ---------------------------------------------------------------- builders of bad inputs
def _dataset(w, tmp: Path, files: dict | None = None) -> Path:
    """A copy of the good dataset with some files replaced (value: JSON text, bytes, or None to delete)."""
    ds = tmp / "ds"
    shutil.copytree(w.ds, ds, ignore=shutil.ignore_patterns(".cache"))
    for name, content in (files or {}).items():
        if content is None:
            (ds / name).unlink()
        else:
            write_file(ds, name, content)
    return ds


def _ckpt_copy(w, tmp: Path, cut: str | None = None, manifest: bool = True) -> Path:
    """A copy of the tiny run's checkpoint-2, optionally with one file cut short and without its size list."""
    ck = tmp / "saved" / "checkpoint-2"
    shutil.copytree(w.ckpt, ck)
    if not manifest:
        state = json.loads((ck / "state.json").read_text())
        state.pop("files")
        (ck / "state.json").write_text(json.dumps(state))
    if cut:
        cut_file(ck / cut)
    return ck


def _export_copy(w, tmp: Path, cut: str) -> Path:
    ex = tmp / "export"
    shutil.copytree(w.export, ex)
    cut_file(ex / cut, 200)
    return ex


def _foreign_export(tmp: Path) -> Path:
    """A diffusers DDPMPipeline: another architecture than lab6's label-conditioned UNet."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    unet = UNet2DModel(sample_size=8, block_out_channels=(8,), down_block_types=("DownBlock2D",),
                       up_block_types=("UpBlock2D",), norm_num_groups=4, layers_per_block=1)
    DDPMPipeline(unet, DDPMScheduler()).save_pretrained(tmp / "foreign")
    return tmp / "foreign"


def _evaluator_file(tmp: Path, kind: str) -> Path:
    p = tmp / f"{kind}.pth"
    if kind == "no_model_key":
        torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, p)
    elif kind == "bare_state_dict":
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, p)
    elif kind == "ten_classes":
        resnet18_file(p, num_classes=10)
    elif kind == "truncated":
        torch.save({"model": {"x": torch.zeros(1000)}}, p)
        cut_file(p)
    return p


def _labels(tmp: Path, content: str) -> Path:
    return write_file(tmp, "labels.json", content)


def _sample(w, tmp, labels=None, **opts) -> list:
    argv = ["sample", "--model", opts.pop("model", w.run), "--labels", labels or w.labels, "--out", tmp / "out",
            "--no-progress"]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", v]
    return argv


def _train(w, tmp, data=None, **opts) -> list:
    argv = ["train", "--profile", opts.pop("profile", "tiny"), "--data", data or w.ds, "--out", tmp / "out",
            "--no-progress"]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", v]
    return argv


def _evaluate(w, tmp, images=None, labels=None, evaluator=None, **opts) -> list:
    argv = ["evaluate", "--images", images or w.images, "--labels", labels or w.labels,
            "--evaluator", evaluator or w.evaluator]
    for k, v in opts.items():
        argv += [f"--{k}", v]
    return argv


def _train_evaluator(w, tmp, **opts) -> list:
    argv = ["train-evaluator", "--data", opts.pop("data", w.ds), "--out", opts.pop("out", tmp / "out" / "ev.pth")]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", v]
    return argv


def _blocked(tmp: Path) -> Path:
    """An output path that cannot be a folder: it lies under a regular file (works as root too)."""
    write_file(tmp, "a_file", "x")
    return tmp / "a_file" / "out"


CUT_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00@\x00\x00\x00@\x08\x02\x00\x00\x00"
FOUR = '[["red cube", "blue cube", "gray cube", "green cube"]]'

# id: (builder(w, tmp) -> argv, exit code, substrings of the message; "{tmp}" is replaced by the row's folder)
ROWS = {
    # label files (read by sample, evaluate, train and synth --like)
    "labels-not-json": (lambda w, t: _sample(w, t, _labels(t, "[[\"red cube\"")), 1,
                        ["{tmp}/labels.json: not valid JSON (line 1"]),
    "labels-not-json-binary": (lambda w, t: _sample(w, t, write_file(t, "labels.json", b"\xff\xfe\x00")), 1,
                               ["{tmp}/labels.json: cannot read"]),
    "labels-top-level-object": (lambda w, t: _sample(w, t, _labels(t, '{"a": ["red cube"]}')), 1,
                                ["labels.json: expected a JSON list of label sets", "got dict"]),
    "labels-unknown-name": (lambda w, t: _sample(w, t, _labels(t, '[["pink cube"]]')), 1,
                            ["labels.json: entry 0[0]: unknown object 'pink cube'", "did you mean"]),
    "labels-misspelt-name": (lambda w, t: _sample(w, t, _labels(t, '[["red cube"], ["blue cub"]]')), 1,
                             ["entry 1[0]: unknown object 'blue cub'; did you mean 'blue cube'"]),
    "labels-duplicate": (lambda w, t: _evaluate(w, t, labels=_labels(t, '[["red cube", "red cube"]]')), 1,
                         ["labels.json: entry 0[1]: duplicate object 'red cube'"]),
    "labels-empty-set": (lambda w, t: _sample(w, t, _labels(t, '[["red cube"], []]')), 1,
                         ["labels.json: entry 1: empty label set; give 1 to 3 object names"]),
    "labels-no-sets": (lambda w, t: _sample(w, t, _labels(t, "[]")), 1, ["labels.json: no label sets listed"]),
    "labels-too-many": (lambda w, t: _sample(w, t, _labels(t, FOUR)), 1,
                        ["labels.json: entry 0: 4 objects, at most 3 are supported"]),
    "labels-non-string": (lambda w, t: _sample(w, t, _labels(t, '[["red cube", 3]]')), 1,
                          ["labels.json: entry 0[1]: expected an object name (string), got 3"]),
    "labels-set-is-string": (lambda w, t: _sample(w, t, _labels(t, '["red cube"]')), 1,
                             ["labels.json: entry 0: expected a list of object names"]),
    "labels-missing-file": (lambda w, t: _sample(w, t, t / "nope.json"), 1, ["{tmp}/nope.json: file not found"]),
    "train-json-top-level-list": (lambda w, t: _train(w, t, _dataset(w, t, {"train.json": '[["red cube"]]'})), 1,
                                  ["{tmp}/ds/train.json: expected a JSON object"]),
    "train-json-misspelt": (lambda w, t: _train(w, t, _dataset(w, t, {"train.json": '{"img_0000.png": ["red cub"]}'})),
                            1, ["ds/train.json: entry 'img_0000.png'[0]: unknown object 'red cub'; did you mean"]),
    "train-json-empty": (lambda w, t: _train(w, t, _dataset(w, t, {"train.json": "{}"})), 1,
                         ["ds/train.json: no training images listed"]),
    "train-json-too-many": (lambda w, t: _train(w, t, _dataset(w, t, {"train.json": '{"a.png": ' + FOUR[1:-1] + "}"})),
                            1, ["ds/train.json: entry 'a.png': 4 objects, at most 3"]),
    "objects-json-reordered": (lambda w, t: _train(w, t, _dataset(w, t, {"objects.json": json.dumps(
        dict(L.OBJECT_TO_INDEX, **{"gray cube": 1, "red cube": 0}))})), 1,
        ["ds/objects.json: entry 'gray cube' has index 1, the course order needs 0"]),
    "objects-json-unknown": (lambda w, t: _train(w, t, _dataset(w, t, {"objects.json": json.dumps(
        dict(L.OBJECT_TO_INDEX, **{"pink cube": 24}))})), 1,
        ["ds/objects.json: entry 'pink cube' is not one of the 24"]),
    "objects-json-missing-entry": (lambda w, t: _train(w, t, _dataset(w, t, {"objects.json": json.dumps(
        {k: v for k, v in L.OBJECT_TO_INDEX.items() if k != "red cube"})})), 1,
        ["ds/objects.json: missing 1 of the 24 objects, e.g. 'red cube'"]),
    "objects-json-list": (lambda w, t: _train(w, t, _dataset(w, t, {"objects.json": json.dumps(list(L.OBJECTS))})),
                          1, ["ds/objects.json: expected a JSON object {name: index}, got list"]),
    "validation-split-duplicate": (lambda w, t: _train(w, t, _dataset(w, t, {"test.json": FOUR})), 1,
                                   ["ds/test.json: entry 0: 4 objects, at most 3"]),
    "like-misspelt": (lambda w, t: ["synth", "--out", t / "out", "--like",
                                    write_file(t, "train.json", '{"a_0.png": ["yelow sphere"]}')], 1,
                      ["{tmp}/train.json: entry 'a_0.png'[0]: unknown object 'yelow sphere'",
                       "did you mean 'yellow sphere'"]),
    # images
    "image-missing": (lambda w, t: _train(w, t, _dataset(w, t, {"iclevr/img_0003.png": None})), 1,
                      ["ds/iclevr: 1 of 12 images listed in train.json are missing (first: img_0003.png)"]),
    "image-truncated": (lambda w, t: _train(w, t, _dataset(w, t, {"iclevr/img_0003.png": CUT_PNG})), 1,
                        ["ds/iclevr/img_0003.png: not a readable image"]),
    "image-not-an-image": (lambda w, t: _train(w, t, _dataset(w, t, {"iclevr/img_0003.png": b"GIF? no, text"})), 1,
                           ["ds/iclevr/img_0003.png: not a readable image"]),
    "evaluate-image-missing": (lambda w, t: _evaluate(w, t, images=t), 1,
                               ["{tmp}: 8 of 8 images missing (first: 0.png", "expected 0.png .. 7.png"]),
    "evaluate-image-truncated": (lambda w, t: _evaluate(w, t, images=_image_folder(w, t, {5: CUT_PNG})), 1,
                                 ["{tmp}/imgs/5.png: not a readable image"]),
    "evaluate-folder-missing": (lambda w, t: _evaluate(w, t, images=t / "nope"), 1,
                                ["{tmp}/nope: image folder not found"]),
    # configs and options
    "profile-unknown": (lambda w, t: _train(w, t, profile="huge"), 2, ["invalid choice: 'huge'", "tiny"]),
    "run-profile-unknown": (lambda w, t: ["run", "--profile", "huge", "--out", t / "out"], 2,
                            ["invalid choice: 'huge'"]),
    "yaml-unknown-key": (lambda w, t: _train(w, t, config=write_file(t, "c.yaml", "train:\n  max_step: 3\n")), 1,
                         ["{tmp}/c.yaml: train.max_step: unknown setting; valid keys:", "max_steps"]),
    "yaml-unknown-section": (lambda w, t: _train(w, t, config=write_file(t, "c.yaml", "training:\n  lr: 0.1\n")), 1,
                             ["c.yaml: training: unknown section; valid: profile, model, schedule, train, sample"]),
    "yaml-wrong-type": (lambda w, t: _train(w, t, config=write_file(t, "c.yaml", "train:\n  max_steps: many\n")), 1,
                        ["c.yaml: train.max_steps: expected an integer, got 'many'"]),
    "yaml-not-yaml": (lambda w, t: _train(w, t, config=write_file(t, "c.yaml", "train: [1, 2\n")), 1,
                      ["c.yaml: not valid YAML (line 2, column 1: expected ',' or ']'"]),
    "yaml-is-a-folder": (lambda w, t: _train(w, t, config=t), 1, ["cannot read the config file"]),
    "yaml-missing": (lambda w, t: _train(w, t, config=t / "nope.yaml"), 1, ["nope.yaml: config file not found"]),
    "yaml-other-profile": (lambda w, t: _train(w, t, config=write_file(t, "c.yaml", "profile: full\n")), 1,
                           ["c.yaml: profile: file is for profile 'full', not 'tiny'"]),
    "yaml-negative-guidance": (lambda w, t: _train(w, t, config=write_file(t, "c.yaml", "sample:\n  guidance_scale: -1\n")),
                               1, ["c.yaml: sample.guidance_scale: must be >= 0"]),
    "train-steps-zero": (lambda w, t: _train(w, t, max_steps=0), 1, ["train.max_steps: must be > 0, got 0"]),
    "train-steps-negative": (lambda w, t: _train(w, t, max_steps=-5), 1, ["train.max_steps: must be > 0, got -5"]),
    "train-batch-zero": (lambda w, t: _train(w, t, batch_size=0), 1, ["train.batch_size: must be > 0, got 0"]),
    "train-lr-zero": (lambda w, t: _train(w, t, lr=0), 1, ["train.lr: must be > 0, got 0.0"]),
    "train-lr-negative": (lambda w, t: _train(w, t, lr=-1e-3), 1, ["train.lr: must be > 0, got -0.001"]),
    "train-checkpoint-every-zero": (lambda w, t: _train(w, t, checkpoint_every=0), 1,
                                    ["train.checkpoint_every: must be > 0"]),
    "train-minutes-zero": (lambda w, t: _train(w, t, max_minutes=0), 1, ["train.max_minutes: must be > 0"]),
    "train-seed-negative": (lambda w, t: _train(w, t, seed=-1), 1, ["train.seed: must be in 0..4294967295, got -1"]),
    "train-device-unknown": (lambda w, t: _train(w, t, device="tpu"), 1,
                             ["train.device: unknown device 'tpu'; use 'cpu', 'cuda' or 'cuda:N'"]),
    "train-data-missing": (lambda w, t: _train(w, t, t / "nope"), 1, ["{tmp}/nope: dataset folder not found"]),
    "sample-steps-zero": (lambda w, t: _sample(w, t, steps=0), 1, ["--steps: must be > 0, got 0"]),
    "sample-steps-above-T": (lambda w, t: _sample(w, t, steps=5000), 1,
                             ["--steps: must be at most the model's 1000 training timesteps, got 5000"]),
    "sample-batch-zero": (lambda w, t: _sample(w, t, batch_size=0), 1, ["--batch-size: must be > 0, got 0"]),
    "sample-guidance-negative": (lambda w, t: _sample(w, t, guidance=-0.5), 1,
                                 ["--guidance: must be >= 0 (1 = no guidance), got -0.5"]),
    "sample-object-guidance-negative": (lambda w, t: _sample(w, t, object_guidance=-1), 1,
                                        ["--object-guidance: must be >= 0 (0 = none), got -1"]),
    "sample-seed-negative": (lambda w, t: _sample(w, t, seed=-3), 1, ["--seed: must be in 0..", "got -3"]),
    "sample-sampler-unknown": (lambda w, t: _sample(w, t, sampler="euler"), 2, ["invalid choice: 'euler'"]),
    "sample-name-with-folder": (lambda w, t: _sample(w, t, name="../elsewhere"), 1,
                                ["--name '../elsewhere': expected a plain name"]),
    "evaluator-train-epochs-zero": (lambda w, t: _train_evaluator(w, t, epochs=0), 1,
                                    ["EvaluatorTrainConfig.epochs: must be >= 1, got 0"]),
    "evaluator-train-batch-zero": (lambda w, t: _train_evaluator(w, t, batch_size=0), 1,
                                   ["EvaluatorTrainConfig.batch_size: must be >= 1, got 0"]),
    "evaluator-train-lr-zero": (lambda w, t: _train_evaluator(w, t, lr=0), 1,
                                ["EvaluatorTrainConfig.lr: must be > 0, got 0.0"]),
    "evaluator-train-minutes-negative": (lambda w, t: _train_evaluator(w, t, max_minutes=-1), 1,
                                         ["EvaluatorTrainConfig.max_minutes: must be >= 0, got -1.0"]),
    "evaluator-train-out-is-folder": (lambda w, t: _train_evaluator(w, t, out=t), 1,
                                      ["is a folder; --out takes the checkpoint's file path"]),
    "synth-scenes-zero": (lambda w, t: ["synth", "--out", t / "out", "--scenes", 0], 1,
                          ["--scenes 0: render at least 1"]),
    "synth-size-small": (lambda w, t: ["synth", "--out", t / "out", "--size", 8], 1,
                         ["--size 8: images must be at least 16 px wide"]),
    "synth-seed-negative": (lambda w, t: ["synth", "--out", t / "out", "--seed", -1], 1,
                            ["--seed -1: use a non-negative"]),
    "synth-like-missing": (lambda w, t: ["synth", "--out", t / "out", "--like", t / "nope.json"], 1,
                           ["{tmp}/nope.json: --like file not found"]),
    # output folders that cannot be written
    "train-out-unwritable": (lambda w, t: ["train", "--profile", "tiny", "--data", w.ds, "--out", _blocked(t)], 1,
                             ["{tmp}/a_file/out: output folder cannot be created: {tmp}/a_file is a file"]),
    "train-out-is-a-file": (lambda w, t: ["train", "--profile", "tiny", "--data", w.ds, "--out", write_file(t, "f", "x")],
                            1, ["{tmp}/f: output folder is a file, not a folder"]),
    "sample-out-unwritable": (lambda w, t: ["sample", "--model", w.run, "--labels", w.labels, "--out", _blocked(t)], 1,
                              ["{tmp}/a_file/out: output folder cannot be created"]),
    "synth-out-unwritable": (lambda w, t: ["synth", "--out", _blocked(t), "--scenes", 1, "--size", 16], 1,
                             ["{tmp}/a_file/out: output folder cannot be created"]),
    "evaluator-train-out-unwritable": (lambda w, t: _train_evaluator(w, t, out=_blocked(t) / "ev.pth"), 1,
                                       ["{tmp}/a_file/out: output folder cannot be created"]),
    "run-out-unwritable": (lambda w, t: ["run", "--profile", "tiny", "--data-root", w.ds, "--out", _blocked(t)], 1,
                           ["{tmp}/a_file/out: output folder cannot be created"]),
    "run-max-steps-negative": (lambda w, t: ["run", "--profile", "tiny", "--data-root", w.ds, "--out", t / "out",
                                             "--max-steps", -3], 1,
                               ["--max-steps: expected a positive whole number, got -3"]),
    "run-max-minutes-negative": (lambda w, t: ["run", "--profile", "tiny", "--data-root", w.ds, "--out", t / "out",
                                               "--max-minutes", -1], 1,
                                 ["--max-minutes: expected a positive number of minutes, got -1.0"]),
    # checkpoints and exported models
    "resume-missing": (lambda w, t: _train(w, t, resume=t / "nope"), 1,
                       ["{tmp}/nope: checkpoint not found; pass --resume latest or a checkpoint-<step>/ folder"]),
    "resume-not-a-checkpoint": (lambda w, t: _train(w, t, resume=w.ds), 1,
                                ["ds: not a checkpoint-<step>/ folder nor a run folder holding a complete one"]),
    "resume-truncated-weights": (lambda w, t: _train(w, t, resume=_ckpt_copy(
        w, t, "model/diffusion_pytorch_model.safetensors")), 1,
        ["saved/checkpoint-2: incomplete or corrupt checkpoint",
         "(model/diffusion_pytorch_model.safetensors has 100 bytes"]),
    "resume-truncated-optimizer-old-format": (lambda w, t: _train(w, t, max_steps=3, resume=_ckpt_copy(
        w, t, "optimizer.pt", manifest=False)), 1,
        ["saved/checkpoint-2/optimizer.pt: truncated or not a PyTorch file"]),
    "resume-truncated-weights-old-format": (lambda w, t: _train(w, t, max_steps=3, resume=_ckpt_copy(
        w, t, "ema/diffusion_pytorch_model.safetensors", manifest=False)), 1,
        ["checkpoint-2/ema/diffusion_pytorch_model.safetensors: truncated or not a safetensors file"]),
    "resume-corrupt-state": (lambda w, t: _train(w, t, resume=write_file(_ckpt_copy(w, t), "state.json", "{").parent), 1,
                             ["checkpoint-2: incomplete or corrupt checkpoint (state.json unreadable"]),
    "resume-other-profile": (lambda w, t: _train(w, t, profile="quick", resume=w.ckpt), 1,
                             ["checkpoint-2: trained with another model.sample_size",
                              "(profile 'tiny', now 'quick'); resume with --profile tiny"]),
    "resume-other-architecture": (lambda w, t: _train(w, t, resume=w.ckpt, config=write_file(
        t, "c.yaml", "model:\n  block_out_channels: [16, 16]\n")), 1,
        ["checkpoint-2: trained with another model.block_out_channels (profile 'tiny', now 'tiny')"]),
    "resume-other-schedule": (lambda w, t: _train(w, t, resume=w.ckpt, config=write_file(
        t, "c.yaml", "schedule:\n  prediction_type: epsilon\n")), 1,
        ["checkpoint-2: trained with another schedule.prediction_type"]),
    "model-missing": (lambda w, t: _sample(w, t, model=t / "nope"), 1, ["{tmp}/nope: model folder not found"]),
    "model-empty-folder": (lambda w, t: _sample(w, t, model=write_file(t, "m/x.txt", "").parent), 1,
                           ["{tmp}/m: holds no pipeline (model_index.json)"]),
    "model-export-truncated": (lambda w, t: _sample(w, t, model=_export_copy(
        w, t, "unet/diffusion_pytorch_model.safetensors")), 1, ["{tmp}/export: cannot load the model"]),
    "model-export-bad-index": (lambda w, t: _sample(w, t, model=_export_copy(w, t, "model_index.json")), 1,
                               ["{tmp}/export: cannot load the model"]),
    "model-other-architecture": (lambda w, t: _sample(w, t, model=_foreign_export(t)), 1,
                                 ["{tmp}/foreign: holds a UNet2DModel, not lab6's label-conditioned ConditionalUNet"]),
    "model-checkpoint-truncated": (lambda w, t: _sample(w, t, model=_ckpt_copy(
        w, t, "ema/diffusion_pytorch_model.safetensors")), 1, ["saved/checkpoint-2: cannot load the model"]),
    "evaluator-missing": (lambda w, t: _evaluate(w, t, evaluator=t / "nope.pth"), 1,
                          ["{tmp}/nope.pth: evaluator checkpoint not found"]),
    "evaluator-no-model-key": (lambda w, t: _evaluate(w, t, evaluator=_evaluator_file(t, "no_model_key")), 1,
                               ["{tmp}/no_model_key.pth: no 'model' key (found 'state_dict')"]),
    "evaluator-bare-state-dict": (lambda w, t: _evaluate(w, t, evaluator=_evaluator_file(t, "bare_state_dict")), 1,
                                  ["bare_state_dict.pth: a bare state_dict without the 'model' key"]),
    "evaluator-wrong-shapes": (lambda w, t: _evaluate(w, t, evaluator=_evaluator_file(t, "ten_classes")), 1,
                               ["ten_classes.pth: not the course's ResNet-18",
                                "fc.0.weight (10, 512) (expected (24, 512))"]),
    "evaluator-truncated": (lambda w, t: _evaluate(w, t, evaluator=_evaluator_file(t, "truncated")), 1,
                            ["truncated.pth: not a readable PyTorch checkpoint"]),
    "sample-evaluator-no-model-key": (lambda w, t: _sample(w, t, evaluator=_evaluator_file(t, "no_model_key")), 1,
                                      ["no_model_key.pth: no 'model' key"]),
}


if not torch.cuda.is_available():
    ROWS.update({
        "train-cuda-without-gpu": (lambda w, t: _train(w, t, device="cuda"), 1,
                                   ["train.device: 'cuda' requested but no CUDA GPU is available; use 'cpu'"]),
        "sample-cuda-without-gpu": (lambda w, t: _sample(w, t, device="cuda"), 1,
                                    ["--device: 'cuda' requested but no CUDA GPU is available"]),
        "evaluate-cuda-without-gpu": (lambda w, t: _evaluate(w, t, device="cuda"), 1,
                                      ["--device: 'cuda' requested but no CUDA GPU is available; use 'cpu'"]),
        "evaluator-train-cuda-without-gpu": (lambda w, t: _train_evaluator(w, t, device="cuda"), 1,
                                             ["--device: 'cuda' requested but no CUDA GPU is available"]),
    })


def _image_folder(w, tmp: Path, replace: dict[int, bytes]) -> Path:
    folder = tmp / "imgs"
    shutil.copytree(w.images, folder)
    for i, data in replace.items():
        (folder / f"{i}.png").write_bytes(data)
    return folder


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_gives_one_line_and_leaves_nothing(row, world, tmp_path, capsys):
    build, code, expected = ROWS[row]
    argv = build(world, tmp_path)
    before = files_under(tmp_path, world.root)
    rc, err = run_cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, f"exit {rc}, stderr:\n{err[-2000:]}"
    assert "Traceback" not in err
    message = lines[-1]
    if code == 1:
        assert message.startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, err
    for part in expected:
        assert part.replace("{tmp}", str(tmp_path)) in message, message
    assert files_under(tmp_path, world.root) == before, "files were left behind"


def test_every_item_of_the_list_is_in_the_table():
    """The issue's list of bad inputs, each with at least one row (a guard against rows being dropped)."""
    wanted = ["labels-not-json", "labels-top-level-object", "train-json-top-level-list", "labels-unknown-name",
              "labels-misspelt-name", "labels-duplicate", "labels-empty-set", "labels-too-many", "labels-non-string",
              "objects-json-reordered", "image-missing", "image-truncated", "image-not-an-image", "profile-unknown",
              "yaml-unknown-key", "train-steps-zero", "train-batch-zero", "train-lr-negative", "sample-steps-zero",
              "sample-batch-zero", "sample-guidance-negative", "yaml-negative-guidance", "train-out-unwritable",
              "sample-out-unwritable", "resume-missing", "model-missing", "resume-truncated-weights",
              "model-export-truncated", "resume-other-profile", "resume-other-architecture",
              "model-other-architecture", "evaluator-no-model-key", "evaluator-wrong-shapes"]
    if not torch.cuda.is_available():
        wanted += ["train-cuda-without-gpu", "sample-cuda-without-gpu", "evaluate-cuda-without-gpu"]
    assert not [w for w in wanted if w not in ROWS]


def test_run_with_a_missing_course_folder_leaves_nothing(tmp_path, capsys):
    before = files_under(tmp_path)
    rc, err = run_cli(["run", "--profile", "tiny", "--data-root", tmp_path / "iclevr", "--out", tmp_path / "out"], capsys)
    assert rc == 1 and err.splitlines()[-1].startswith(f"error: {tmp_path / 'iclevr'}: no train.json")
    assert files_under(tmp_path) == before


def test_run_does_not_render_into_an_explicit_missing_data_root(tmp_path, capsys):
    before = files_under(tmp_path)
    rc, err = run_cli(["run", "--profile", "tiny", "--data-root", tmp_path / "mine", "--out", tmp_path / "out"], capsys)
    assert rc == 1 and err.splitlines()[-1].startswith(f"error: {tmp_path / 'mine'}: no train.json; render one with")
    assert files_under(tmp_path) == before


def test_cli_exit_codes_and_debug_traceback(world):
    """The real entry point: a bad value exits 1 with one line and no traceback; --debug shows the traceback."""
    bad = world.bg / "train.json"
    rc, err = finish(world.procs["plain"])
    assert rc == 1 and err == f"error: {bad}: entry 'a_0.png'[1]: duplicate object 'red cube'; each object may " \
                              f"appear once per set\n"
    rc, err = finish(world.procs["debug"])
    assert rc == 1 and "Traceback (most recent call last)" in err and "LabelError" in err
    assert not (world.bg / "o").exists()


def test_odd_image_sizes_and_modes_are_read(world, tmp_path, capsys):
    """Not errors: any size and mode becomes 64x64 RGB; 16-bit and float images are scaled, not clipped."""
    from lab6.data import IclevrDataset, load_image
    ds = _dataset(world, tmp_path)
    odd = {"img_0000.png": Image.fromarray(np.full((30, 40), 65535, np.uint16)),  # 16-bit grey, white
           "img_0001.png": Image.new("P", (64, 64), 3), "img_0002.png": Image.new("LA", (80, 80), (200, 255)),
           "img_0003.png": Image.new("RGBA", (320, 240), (255, 0, 0, 0)), "img_0004.png": Image.new("1", (64, 64), 1)}
    for name, im in odd.items():
        im.save(ds / "iclevr" / name)
    Image.fromarray(np.full((20, 20), 0.5, np.float32)).save(tmp_path / "f.tiff")
    assert load_image(tmp_path / "f.tiff", 8)[0, 0].tolist() == [128, 128, 128]
    x = IclevrDataset(ds, resolution=16, cache=False).images  # (12, 3, 16, 16) uint8
    assert x.shape == (12, 3, 16, 16)
    assert x[0].min() == 255 and x[4].min() == 255 and x[3, 0].min() == 255 and x[3, 1:].max() == 0
    imgs = _image_folder(world, tmp_path, {})
    odd["img_0000.png"].save(imgs / "0.png")
    odd["img_0003.png"].save(imgs / "1.png")
    rc, err = run_cli(_evaluate(world, tmp_path, images=imgs), capsys)
    assert rc == 0, err
