"""The count checker (exact-scene accuracy) and FID / KID on the evaluator's features."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lab6 import checker as C
from lab6 import checker_train as CT
from lab6 import cli
from lab6 import labels as L
from lab6.errors import CheckpointError, DataError
from lab6.evaluator import SHIPPED_EVALUATOR, Evaluator
from lab6.fidelity import fid_kid, kid_subset_size
from lab6.synth import render_labels, render_scene, scene_rng


def test_count_targets_count_copies_and_cap_at_three_or_more():
    y = CT.count_targets([["red cube"], ["red cube", "red cube", "cyan sphere"], ["gray cylinder"] * 5])
    idx = L.OBJECT_TO_INDEX
    assert y[0, idx["red cube"]] == 1 and y[0].sum() == 1
    assert y[1, idx["red cube"]] == 2 and y[1, idx["cyan sphere"]] == 1
    assert y[2, idx["gray cylinder"]] == 3  # the 3+ class
    with pytest.raises(DataError, match="object list 0: unknown object 'red cubes'"):
        CT.count_targets([["red cubes"]])


def test_checker_scenes_hold_copies_look_alikes_and_binding_sets():
    scenes = [CT.sample_count_scene(scene_rng(0, 11, 0, i)) for i in range(400)]
    assert all(1 <= len(s) <= 5 and all(n in L.OBJECT_TO_INDEX for n in s) for s in scenes)
    assert sum(len(set(s)) < len(s) for s in scenes) > 40  # duplicates
    assert sum(len(s) > 3 for s in scenes) > 40            # more objects than a label set holds
    assert scenes == [CT.sample_count_scene(scene_rng(0, 11, 0, i)) for i in range(400)]  # reproducible


def test_scene_report_reads_exact_duplicate_unrequested_and_missing():
    wanted = C.requested_counts([["red cube", "cyan sphere"]] * 4)
    counts = wanted.clone()
    idx = L.OBJECT_TO_INDEX
    counts[1, idx["red cube"]] = 2          # a duplicate
    counts[2, idx["gray cylinder"]] = 1     # an unrequested object
    counts[3, idx["cyan sphere"]] = 0       # a missing one
    assert C.scene_report(counts, wanted) == {"exact": 0.25, "duplicate": 0.25, "unrequested": 0.25,
                                              "missing": 0.25, "images": 4}


def test_train_checker_end_to_end_tiny(tmp_path):
    data, out = tmp_path / "renders", tmp_path / "ck.pth"
    assert cli.main(["train-checker", "--data", str(data), "--scenes", "6", "--workers", "1", "--epochs", "2",
                     "--batch-size", "4", "--width", "8", "--device", "cpu", "--out", str(out)]) == 0
    counts = json.loads((data / CT.COUNTS_FILE).read_text())
    assert len(counts) >= 6 and all((data / "images" / f).is_file() for f in counts)
    ck = C.CountChecker(out, device="cpu")
    assert ck.mirror_mean  # trained with flips, so read with the mirror image too
    assert ck.info["width"] == 8 and all(v.dtype == torch.float16 for k, v in
                                         torch.load(out, weights_only=True)["model"].items() if "weight" in k)
    images = torch.from_numpy(render_labels([["red cube"], ["blue sphere", "gray cube"]], seed=5)).permute(0, 3, 1, 2)
    assert ck.counts(images).shape == (2, 24)
    assert set(ck.report(images, [["red cube"], ["blue sphere", "gray cube"]])) >= {"exact", "duplicate"}
    # fine-tuning starts from the saved weights
    assert cli.main(["train-checker", "--data", str(data), "--epochs", "1", "--batch-size", "4", "--width", "8",
                     "--device", "cpu", "--init", str(out), "--out", str(tmp_path / "ck2.pth")]) == 0


@pytest.mark.parametrize("option, value, message", [("--epochs", "0", "--epochs 0: must be >= 1"),
                                                    ("--width", "0", "--width 0: must be >= 1"),
                                                    ("--lr", "-1", "the LR must be > 0"),
                                                    ("--init", "nothing.pth", "nothing.pth: count checker not found"),
                                                    ("--device", "tpu", "--device: unknown device 'tpu'; use 'cpu', 'cuda'")])
def test_bad_checker_options_are_one_line_errors(tmp_path, capsys, option, value, message):
    data = tmp_path / "renders"
    assert cli.main(["train-checker", "--data", str(data), "--scenes", "2", "--workers", "1", "--device", "cpu",
                     option, value]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not data.exists()  # checked before anything is rendered


def test_a_missing_or_foreign_checker_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pth: count checker not found; train one"):
        C.CountChecker(tmp_path / "nothing.pth")
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="foreign.pth: not a count checker checkpoint"):
        C.CountChecker(tmp_path / "foreign.pth")


def test_the_shipped_checker_reads_fresh_renders_and_sees_a_copy():
    ck = C.CountChecker(device="cpu")
    sets = [["red sphere"], ["cyan cube", "gray cylinder"], ["blue cylinder", "yellow sphere", "brown cube"]] * 4
    images = torch.from_numpy(render_labels(sets, seed=4242)).permute(0, 3, 1, 2)
    assert ck.report(images, sets)["exact"] >= 0.9
    copies = np.stack([render_scene(["purple cube", "purple cube"], scene_rng(77, i)).images[-1] for i in range(8)])
    read = ck.counts(torch.from_numpy(copies).permute(0, 3, 1, 2))[:, L.OBJECT_TO_INDEX["purple cube"]]  # (8,)
    assert read.eq(2).float().mean() >= 0.75


def test_a_mirror_mean_checker_reads_a_scene_and_its_mirror_image_alike(tmp_path):
    ck = C.CountChecker(device="cpu")
    assert ck.mirror_mean
    x = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(ck.counts(x), ck.counts(x.flip(-1)))
    both = (ck.model.logits(x).view(-1, 24, C.COUNTS).softmax(-1)
            + ck.model.logits(x.flip(-1)).view(-1, 24, C.COUNTS).softmax(-1)) / 2
    assert torch.equal(ck.counts(x), both.argmax(-1))
    ckpt = torch.load(C.SHIPPED, weights_only=True)  # the same weights in a file that does not say so: one look
    ckpt.pop("mirror_mean")
    torch.save(ckpt, tmp_path / "plain.pth")
    plain = C.CountChecker(tmp_path / "plain.pth", device="cpu")
    assert not plain.mirror_mean
    assert torch.equal(plain.counts(x), ck.model.logits(x).view(-1, 24, C.COUNTS).argmax(-1))


def test_fid_kid_put_renders_closer_to_renders_than_to_noise():
    ev = Evaluator(SHIPPED_EVALUATOR, device="cpu")
    sets = [[L.OBJECTS[i % 24]] for i in range(24)]
    a = torch.from_numpy(render_labels(sets, seed=1)).permute(0, 3, 1, 2).float() / 127.5 - 1
    b = torch.from_numpy(render_labels(sets, seed=2)).permute(0, 3, 1, 2).float() / 127.5 - 1
    noise = torch.rand(24, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    same, far = fid_kid(a, b, ev), fid_kid(a, noise, ev)
    assert same["fid"] < far["fid"] / 5 and same["kid"] < far["kid"]
    assert same["kid_subset"] == kid_subset_size(24) == 12
    assert np.isfinite([same["fid"], same["kid"], same["kid_std"]]).all()
