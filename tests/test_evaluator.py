"""The evaluator: torchvision-identical ResNet-18, the course's metric tie-for-tie, checkpoints, CLI, training."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lab6 import cli, devices
from lab6 import data as D
from lab6 import evaluator as E
from lab6 import evaluator_train as ET
from lab6 import labels as L
from lab6.data import object_masks
from lab6.errors import CheckpointError, ConfigError, DataError, LabelError
from lab6.synth import write_dataset
from tests.conftest import write_course_layout

# torchvision.models.resnet18().state_dict() with fc = Sequential(Linear(512, 24), Sigmoid()), in order.
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix, c):
    return [(f"{prefix}.{p}", (c,) if p != "num_batches_tracked" else ()) for p in BN]


TORCHVISION_KEYS = (
    [("conv1.weight", (64, 3, 7, 7))] + _bn("bn1", 64)
    + [("layer1.0.conv1.weight", (64, 64, 3, 3))] + _bn("layer1.0.bn1", 64)
    + [("layer1.0.conv2.weight", (64, 64, 3, 3))] + _bn("layer1.0.bn2", 64)
    + [("layer1.1.conv1.weight", (64, 64, 3, 3))] + _bn("layer1.1.bn1", 64)
    + [("layer1.1.conv2.weight", (64, 64, 3, 3))] + _bn("layer1.1.bn2", 64)
    + [("layer2.0.conv1.weight", (128, 64, 3, 3))] + _bn("layer2.0.bn1", 128)
    + [("layer2.0.conv2.weight", (128, 128, 3, 3))] + _bn("layer2.0.bn2", 128)
    + [("layer2.0.downsample.0.weight", (128, 64, 1, 1))] + _bn("layer2.0.downsample.1", 128)
    + [("layer2.1.conv1.weight", (128, 128, 3, 3))] + _bn("layer2.1.bn1", 128)
    + [("layer2.1.conv2.weight", (128, 128, 3, 3))] + _bn("layer2.1.bn2", 128)
    + [("layer3.0.conv1.weight", (256, 128, 3, 3))] + _bn("layer3.0.bn1", 256)
    + [("layer3.0.conv2.weight", (256, 256, 3, 3))] + _bn("layer3.0.bn2", 256)
    + [("layer3.0.downsample.0.weight", (256, 128, 1, 1))] + _bn("layer3.0.downsample.1", 256)
    + [("layer3.1.conv1.weight", (256, 256, 3, 3))] + _bn("layer3.1.bn1", 256)
    + [("layer3.1.conv2.weight", (256, 256, 3, 3))] + _bn("layer3.1.bn2", 256)
    + [("layer4.0.conv1.weight", (512, 256, 3, 3))] + _bn("layer4.0.bn1", 512)
    + [("layer4.0.conv2.weight", (512, 512, 3, 3))] + _bn("layer4.0.bn2", 512)
    + [("layer4.0.downsample.0.weight", (512, 256, 1, 1))] + _bn("layer4.0.downsample.1", 512)
    + [("layer4.1.conv1.weight", (512, 512, 3, 3))] + _bn("layer4.1.bn1", 512)
    + [("layer4.1.conv2.weight", (512, 512, 3, 3))] + _bn("layer4.1.bn2", 512)
    + [("fc.0.weight", (24, 512)), ("fc.0.bias", (24,))]
)


class CourseEvaluator:
    """The course's evaluator code, verbatim apart from taking the network as an argument."""

    def __init__(self, resnet18):
        self.resnet18 = resnet18

    def compute_acc(self, out, onehot_labels):
        batch_size = out.size(0)
        acc = 0
        total = 0
        for i in range(batch_size):
            k = int(onehot_labels[i].sum().item())
            total += k
            outv, outi = out[i].topk(k)
            lv, li = onehot_labels[i].topk(k)
            for j in outi:
                if j in li:
                    acc += 1
        return acc / total

    def eval(self, images, labels):
        with torch.no_grad():
            out = self.resnet18(images)
            acc = self.compute_acc(out.cpu(), labels.cpu())
            return acc


def random_state_dict(seed=0, fc_scale=1.0):
    """A ResNet-18 state_dict with random weights and non-trivial batch-norm statistics."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in TORCHVISION_KEYS:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(".bias"):
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        elif ".bn" in key or "downsample.1" in key or key.startswith("bn1"):
            sd[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:  # conv / linear weights, He-scaled
            fan_in = int(np.prod(shape[1:]))
            sd[key] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
    sd["fc.0.weight"] *= fc_scale
    return sd


def functional_resnet18(sd, x, training=False):
    """torchvision's BasicBlock ResNet-18 forward written with torch.nn.functional on a state_dict."""
    def bn(h, p):
        mean, var = sd[f"{p}.running_mean"].clone(), sd[f"{p}.running_var"].clone()
        return F.batch_norm(h, mean, var, sd[f"{p}.weight"], sd[f"{p}.bias"], training, 0.1, 1e-5)

    h = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, 3, 2, 1)
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            stride = 2 if layer > 1 and block == 0 else 1
            out = F.relu(bn(F.conv2d(h, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                h = bn(F.conv2d(h, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            h = F.relu(out + h)
    h = F.adaptive_avg_pool2d(h, 1).flatten(1)
    return torch.sigmoid(F.linear(h, sd["fc.0.weight"], sd["fc.0.bias"]))


@pytest.fixture
def ckpt_path(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": random_state_dict()}, path)
    return path


def random_labels(n, g, max_k=3):
    y = torch.zeros(n, 24)
    for i in range(n):
        k = int(torch.randint(1, max_k + 1, (1,), generator=g))
        y[i, torch.randperm(24, generator=g)[:k]] = 1
    return y


# ---------------------------------------------------------------- architecture
@pytest.mark.parametrize("width", [8, 16])
def test_narrow_network_widens_to_the_course_layout(width):
    sd = {k: v for k, v in random_state_dict(seed=width).items()}
    narrow = E.ResNet18(width=width)
    narrow.load_state_dict({k: v[tuple(slice(0, n) for n in narrow.state_dict()[k].shape)]
                            for k, v in sd.items()})
    wide = E.widen_state_dict(narrow.state_dict())
    assert [(k, tuple(v.shape)) for k, v in wide.items()] == TORCHVISION_KEYS
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(functional_resnet18(wide, x), narrow.eval()(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(functional_resnet18(wide, x, training=True), narrow.train()(x), rtol=0, atol=1e-5)


def test_state_dict_matches_torchvision_layout():
    assert len(TORCHVISION_KEYS) == 122
    got = [(k, tuple(v.shape)) for k, v in E.ResNet18().state_dict().items()]
    assert got == TORCHVISION_KEYS
    assert list(E.expected_shapes().items()) == TORCHVISION_KEYS


@pytest.mark.parametrize("size", [64, 32])
def test_forward_matches_functional_resnet18(size):
    sd = random_state_dict(seed=1)
    model = E.ResNet18()
    model.load_state_dict(sd)
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x), functional_resnet18(sd, x), rtol=0, atol=1e-5)
        model.train()
        torch.testing.assert_close(model(x), functional_resnet18(sd, x, training=True), rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.sigmoid(model.logits(x)), model(x), rtol=0, atol=1e-6)


def test_checkpoint_loads_into_evaluator(ckpt_path):
    ev = E.Evaluator(ckpt_path, device="cpu")
    x = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    torch.testing.assert_close(ev.probs(x), functional_resnet18(random_state_dict(), x), rtol=0, atol=1e-5)
    assert not ev.model.training


# ---------------------------------------------------------------- metric parity
def test_course_metric_parity_with_ties():
    g = torch.Generator().manual_seed(0)
    course = CourseEvaluator(None)
    tied_rows = 0
    for trial in range(40):
        n = int(torch.randint(1, 50, (1,), generator=g))
        y = random_labels(n, g, max_k=5)
        levels = int(torch.randint(2, 6, (1,), generator=g))  # few distinct values: many ties
        out = torch.randint(0, levels, (n, 24), generator=g).float() / (levels - 1)
        if trial % 4 == 0:
            out = torch.rand(n, 24, generator=g)  # and some without ties
        for i in range(n):
            k = int(y[i].sum())
            s = out[i].sort(descending=True).values
            tied_rows += int(s[k - 1] == s[k])
        hits, total = E.course_hits(out, y)
        assert total == int(y.sum())
        assert hits / total == course.compute_acc(out, y) == E.course_accuracy(out, y)
        results = E.breakdown_from_probs(out, y)
        assert sum(r.hits for r in results) == hits
    assert tied_rows > 200  # the boundary of the top k really was tied, often


def test_evaluator_accuracy_parity_on_saturated_model(tmp_path):
    # A large fc scale saturates the sigmoid: many outputs are exactly 0.0 or 1.0, so topk breaks ties.
    path = tmp_path / "sat.pth"
    torch.save({"model": random_state_dict(seed=4, fc_scale=300.0)}, path)
    ev = E.Evaluator(path, device="cpu")
    g = torch.Generator().manual_seed(5)
    x = torch.rand(64, 3, 64, 64, generator=g) * 2 - 1
    y = random_labels(64, g)
    out = ev.probs(x)
    assert ((out == 1.0).sum(1) > 3).any() and ((out == 0.0).sum(1) > 3).any()
    assert ev.accuracy(x, y) == CourseEvaluator(ev.model).eval(x, y)


def test_label_sets_and_tensors_agree(ckpt_path):
    ev = E.Evaluator(ckpt_path, device="cpu")
    sets = [["red cube"], ["blue sphere", "gray cylinder"], ["green cube", "cyan sphere", "yellow cylinder"]]
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    assert ev.score(x, sets) == ev.score(x, L.encode_batch(sets))
    sc = ev.scores(x, sets)
    assert (sc["hits"], sc["labels"]) == ev.score(x, sets) and sc["accuracy"] == ev.accuracy(x, sets)
    seen = E.unrequested_counts(ev.probs(x), L.encode_batch(sets))
    assert sc["unrequested"] == pytest.approx(float((seen > 0).float().mean()))
    with pytest.raises(LabelError, match="3 images but 2 label sets"):
        ev.score(x, sets[:2])


def test_uint8_and_other_sizes(ckpt_path):
    ev = E.Evaluator(ckpt_path, device="cpu")
    x8 = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(ev.probs(x8), ev.probs(x8.float() / 127.5 - 1))
    x32 = torch.rand(2, 3, 32, 32) * 2 - 1
    with pytest.warns(UserWarning, match="images are 32x32, resizing to 64x64"):
        p = ev.probs(x32)
    up = F.interpolate(x32, size=64, mode="bilinear", align_corners=False)
    torch.testing.assert_close(p, ev.probs(up))
    with pytest.raises(DataError, match=r"expected images of shape \(B, 3, H, W\)"):
        ev.probs(torch.rand(2, 1, 64, 64))
    nan = torch.zeros(3, 3, 64, 64)
    nan[1, 0, 5, 5] = float("nan")
    with pytest.raises(DataError, match=r"1 of 3 images hold NaN or inf values \(first: image 1\)"):
        ev.accuracy(nan, [["red cube"]] * 3)


# ---------------------------------------------------------------- breakdown
def test_breakdown_names_what_was_seen_instead():
    idx = L.OBJECT_TO_INDEX
    y = L.encode_batch([["red cube", "blue sphere", "green cylinder"], ["gray cube"], ["cyan sphere"]])
    out = torch.full((3, 24), 0.01)
    out[0, [idx["red sphere"], idx["blue sphere"], idx["yellow cube"]]] = torch.tensor([0.9, 0.8, 0.7])
    out[0, idx["red cube"]] = 0.3
    out[1, idx["red cube"]] = 0.9
    out[2, idx["cyan sphere"]] = 0.95
    r = E.breakdown_from_probs(out, y)
    assert r[0].hits == 1 and r[0].predicted == ["red sphere", "blue sphere", "yellow cube"]
    assert [(m.object, m.kind, m.seen) for m in r[0].misses] == [
        ("red cube", E.WRONG_SHAPE, "red sphere"), ("green cylinder", E.MISSING, "yellow cube")]
    assert r[0].misses[0].prob == pytest.approx(0.3)
    assert [(m.object, m.kind, m.seen) for m in r[1].misses] == [("gray cube", E.WRONG_COLOUR, "red cube")]
    assert r[2].hits == 1 and r[2].misses == []
    assert [x.unrequested for x in r] == [["red sphere", "yellow cube"], ["red cube"], []]  # p > 0.5, not asked
    assert E.summarize(r) == {"labels": 5, "hits": 2, E.WRONG_SHAPE: 1, E.WRONG_COLOUR: 1, E.MISSING: 1,
                              "images": 3, "with unrequested": 2}
    assert E.unrequested_counts(out, y).tolist() == [2, 1, 0]
    # An image that draws its object and one more still scores 1 on the top-k metric; `unrequested` sees it.
    extra = torch.full((1, 24), 0.01)
    extra[0, [idx["cyan sphere"], idx["red cube"]]] = torch.tensor([0.9, 0.8])
    assert E.course_hits(extra, L.encode_batch([["cyan sphere"]])) == (1, 1)
    assert E.unrequested_counts(extra, L.encode_batch([["cyan sphere"]])).tolist() == [1]


# ---------------------------------------------------------------- checkpoints
def test_find_evaluator_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(E, "COURSE_CHECKPOINT", Path("data") / "iclevr" / "checkpoint.pth")
    monkeypatch.setattr(E, "SYNTH_CHECKPOINT", Path("data") / "synth" / "evaluator.pth")
    with pytest.raises(CheckpointError, match=re.escape("lab6 train-evaluator --data data/synth")):
        E.find_evaluator()
    (tmp_path / "data" / "synth").mkdir(parents=True)
    # default synthetic renders (their .synth.json says so): the shipped evaluator
    write_dataset(tmp_path / "data" / "synth", scenes=1, workers=1, progress=False)
    assert E.find_evaluator() == E.SHIPPED_EVALUATOR
    assert E.find_evaluator(data_root="data/synth") == E.SHIPPED_EVALUATOR
    # a user's own evaluator.pth wins over the shipped one, the course's checkpoint.pth over both
    (tmp_path / "data" / "synth" / "evaluator.pth").write_bytes(b"x")
    assert E.find_evaluator() == E.SYNTH_CHECKPOINT
    (tmp_path / "data" / "iclevr").mkdir()
    (tmp_path / "data" / "iclevr" / "checkpoint.pth").write_bytes(b"x")
    assert E.find_evaluator() == E.COURSE_CHECKPOINT
    with pytest.raises(CheckpointError, match="other.pth: evaluator checkpoint not found"):
        E.find_evaluator("other.pth")
    # With a data root: that folder's course checkpoint, else its evaluator.pth; never another folder's.
    (tmp_path / "mine").mkdir()
    with pytest.raises(CheckpointError, match=re.escape("lab6 train-evaluator --data mine")):
        E.find_evaluator(data_root="mine")
    assert E.find_evaluator(data_root="data/synth") == E.SYNTH_CHECKPOINT
    (tmp_path / "data" / "synth" / "checkpoint.pth").write_bytes(b"x")
    assert E.find_evaluator(data_root="data/synth") == tmp_path.joinpath("data/synth/checkpoint.pth").relative_to(tmp_path)


def test_the_shipped_evaluator_needs_default_renders(tmp_path):
    write_dataset(tmp_path / "small", scenes=1, size=32, workers=1, progress=False)
    with pytest.raises(CheckpointError, match=r"no default synthetic renders .*lab6 train-evaluator --data"):
        E.find_evaluator(data_root=tmp_path / "small")
    (tmp_path / "small" / ".synth.json").write_text("{not json")
    assert not E.is_default_synth(tmp_path / "small")


def test_the_shipped_evaluator_reads_fresh_renders():
    """The shipped file loads (fp16 weights into the fp32 network) and reads ground truth it never saw."""
    from lab6.synth import render_labels
    ev = E.Evaluator(E.SHIPPED_EVALUATOR, device="cpu")
    assert ev.path.stat().st_size < 25e6
    sets = [["red sphere"], ["cyan cube", "gray cylinder"], ["blue cylinder", "yellow sphere", "brown cube"]] * 4
    images = torch.from_numpy(render_labels(sets, seed=4242)).permute(0, 3, 1, 2)
    assert ev.accuracy(images, sets) >= 0.95


def _bad_checkpoints(tmp_path):
    good = random_state_dict()
    torch.save({"model": good}, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint")
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"state_dict": good}, tmp_path / "nomodel.pth")
    torch.save(good, tmp_path / "bare.pth")
    torch.save({"model": dict(good, **{"fc.0.weight": torch.zeros(10, 512), "fc.0.bias": torch.zeros(10)})},
               tmp_path / "fc10.pth")
    torch.save({"model": {k: v for k, v in good.items() if not k.startswith("layer4.1")}}, tmp_path / "short.pth")
    torch.save({"model": dict(good, **{"fc.weight": torch.zeros(24, 512)})}, tmp_path / "extra.pth")
    return [
        ("missing.pth", "evaluator checkpoint not found"),
        ("cut.pth", "not a readable PyTorch checkpoint, truncated or another format"),
        ("junk.pth", "not a"),
        ("empty.pth", "not a readable PyTorch checkpoint"),
        ("nomodel.pth", "no 'model' key (found 'state_dict')"),
        ("bare.pth", "a bare state_dict without the 'model' key"),
        ("fc10.pth", "wrong shapes: fc.0.weight (10, 512) (expected (24, 512)), fc.0.bias (10,)"),
        ("short.pth", "10 missing keys (first: layer4.1.conv1.weight"),
        ("extra.pth", "1 unexpected keys (first: fc.weight)"),
    ]


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    for name, message in _bad_checkpoints(tmp_path):
        with pytest.raises(CheckpointError) as info:
            E.Evaluator(tmp_path / name, device="cpu")
        text = str(info.value)
        assert message in text and name in text and "\n" not in text, text


def test_tolerated_checkpoint_variants(tmp_path):
    sd = random_state_dict()
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # pre-0.4.1 torchvision
    torch.save({"model": old, "optimizer": {"lr": 1e-3}}, tmp_path / "old.pth")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "dp.pth")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    want = functional_resnet18(sd, x)
    for name in ("old.pth", "dp.pth"):
        torch.testing.assert_close(E.Evaluator(tmp_path / name, device="cpu").probs(x), want, rtol=0, atol=1e-5)


def test_course_checkpoint_if_present():
    if not E.COURSE_CHECKPOINT.is_file():
        pytest.skip(f"{E.COURSE_CHECKPOINT} is not here (the course's file is not redistributed)")
    ev = E.Evaluator(E.COURSE_CHECKPOINT, device="cpu")
    assert ev.probs(torch.zeros(1, 3, 64, 64)).shape == (1, 24)


# ---------------------------------------------------------------- CLI evaluate
def _write_images(folder, n, size=64, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_cli_evaluate(tmp_path, ckpt_path, capsys):
    sets = [["red cube"], ["blue sphere", "gray cylinder"], ["green cube", "cyan sphere", "yellow cylinder"]]
    (tmp_path / "labels.json").write_text(json.dumps(sets))
    _write_images(tmp_path / "images", 3)
    argv = ["evaluate", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels.json"),
            "--evaluator", str(ckpt_path), "--device", "cpu"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    m = re.search(r"^accuracy: (\d\.\d{4}) \((\d+)/6\)$", out, re.M)
    assert m, out
    from lab6.data import load_image_folder
    hits, total = E.Evaluator(ckpt_path, device="cpu").score(load_image_folder(tmp_path / "images", 3), sets)
    assert (int(m.group(2)), float(m.group(1))) == (hits, round(hits / 6, 4))
    (tmp_path / "images" / "2.png").unlink()
    assert cli.main(argv) == 1
    assert "2.png" in capsys.readouterr().err
    assert cli.main(argv[:-4] + ["--evaluator", str(tmp_path / "nope.pth")]) == 1
    assert "nope.pth: evaluator checkpoint not found" in capsys.readouterr().err


def test_cli_evaluate_resizes_other_sizes(tmp_path, ckpt_path, capsys):
    (tmp_path / "labels.json").write_text(json.dumps([["red cube"], ["blue sphere"]]))
    _write_images(tmp_path / "images", 2, size=32)
    argv = ["evaluate", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels.json"),
            "--evaluator", str(ckpt_path), "--device", "cpu"]
    with pytest.warns(UserWarning, match="resizing to 64x64"):
        assert cli.main(argv) == 0
    assert "accuracy: " in capsys.readouterr().out


# ---------------------------------------------------------------- training
TINY = dict(epochs=2, batch_size=8, val_images=4, max_minutes=0, threads=1, save_every_minutes=0)


def test_augment_keeps_shape_and_range():
    cfg = ET.EvaluatorTrainConfig(round_trip=1.0, blur=1.0, noise=0.0, light=0.0)
    x = torch.rand(6, 3, 64, 64) * 2 - 1
    y = ET.augment(x, cfg, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5 and not torch.equal(x, y)
    flat = torch.full((2, 3, 64, 64), 0.25)
    torch.testing.assert_close(ET.augment(flat, cfg, torch.Generator().manual_seed(1)), flat)  # blur keeps means


def test_light_changes_are_the_ones_named():
    from lab6.light import LightRange, random_light, relight
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(relight(x), x)  # the defaults change nothing
    gray = torch.zeros(2, 3, 8, 8)  # 0.5 in [0, 1] units
    warm = relight(gray, (1.06, 1.0, 0.94))
    torch.testing.assert_close(warm[:, :, 0, 0], torch.tensor([[0.06, 0.0, -0.06]] * 2))
    torch.testing.assert_close(relight(gray, gamma=0.5)[0, 0, 0, 0], torch.tensor(2 * 0.5 ** 0.5 - 1))
    torch.testing.assert_close(relight(gray, offset=torch.tensor([0.02, -0.02]))[:, 0, 0, 0], torch.tensor([0.04, -0.04]))
    span = LightRange()
    y = random_light(torch.zeros(64, 3, 8, 8), torch.Generator().manual_seed(0), span)
    u = (y[:, :, 0, 0] + 1) / 2  # (64, 3): 0.5 under 64 lights
    lo = (0.5 * (1 - span.gain)) ** span.gamma - span.offset
    hi = (0.5 * (1 + span.gain)) ** (1 / span.gamma) + span.offset
    assert u.min() >= lo - 1e-6 and u.max() <= hi + 1e-6 and u.std() > 0.01  # each image its own light
    assert (u[:, 0] - u[:, 2]).abs().max() > 0.05  # white balance: channels move apart


def test_augment_sees_images_under_other_lights():
    flat = torch.zeros(64, 3, 8, 8)
    cfg = ET.EvaluatorTrainConfig(round_trip=0.0, blur=0.0, noise=0.0, flip=False, light=1.0)
    y = ET.augment(flat, cfg, torch.Generator().manual_seed(0))
    assert (y.flatten(2).std(2) < 1e-6).all() and y[:, :, 0, 0].std(0).min() > 0.01  # still flat, each one tinted
    assert torch.equal(ET.augment(flat, ET.EvaluatorTrainConfig(round_trip=0.0, blur=0.0, noise=0.0, flip=False,
                                                                light=0.0), torch.Generator()), flat)


def test_train_evaluator_fine_tunes_from_init(tmp_path, capsys):
    root = write_course_layout(tmp_path / "ds", n=24)
    first = ET.train_evaluator(root, tmp_path / "first.pth", ET.EvaluatorTrainConfig(**dict(TINY, epochs=1, width=8)),
                               progress=False)
    start = E.load_checkpoint(first)["model"]
    cfg = ET.EvaluatorTrainConfig(**dict(TINY, epochs=1, init=str(first), lr=1e-9))
    tuned = E.load_checkpoint(ET.train_evaluator(root, tmp_path / "tuned.pth", cfg, progress=False))
    assert tuned["train_width"] == 64 and tuned["config"]["init"] == str(first)
    torch.testing.assert_close(tuned["model"]["fc.0.weight"], start["fc.0.weight"], atol=1e-5, rtol=0)  # started there
    with pytest.raises(ConfigError, match="fine-tuning from --init .* trains the saved width 64, got 32"):
        ET.EvaluatorTrainConfig(init=str(first), width=32)
    capsys.readouterr()
    argv = ["train-evaluator", "--data", str(root), "--out", str(tmp_path / "x.pth"), "--init", str(tmp_path / "no.pth")]
    assert cli.main(argv) == 1 and not (tmp_path / "x.pth").exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no.pth: evaluator checkpoint not found" in err and "\n" not in err


def test_train_evaluator_joins_the_training_images_of_other_roots(tmp_path):
    one, two = write_course_layout(tmp_path / "one", n=24), write_course_layout(tmp_path / "two", n=24, seed=1)
    cfg = ET.EvaluatorTrainConfig(**dict(TINY, epochs=1, width=8))
    alone = E.load_checkpoint(ET.train_evaluator(one, tmp_path / "alone.pth", cfg, progress=False))
    both = E.load_checkpoint(ET.train_evaluator(one, tmp_path / "both.pth", cfg, progress=False, also=[two]))
    assert (alone["steps"], both["steps"]) == ((24 - 4) // 8, (48 - 4) // 8)  # one epoch of each set of images
    assert both["data"] == f"{one}, {two}" and both["data_key"] != alone["data_key"]
    with pytest.raises(DataError, match="nowhere"):
        ET.train_evaluator(one, tmp_path / "x.pth", cfg, progress=False, also=[tmp_path / "nowhere"])
    assert not (tmp_path / "x.pth").exists()


def _floor_scene(squares, size=64):
    """A uint8 image (3, H, W): a shaded gray floor with coloured squares (row, col, side, rgb)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = (150 + 0.6 * yy - 0.3 * xx).float()[None].repeat(3, 1, 1)
    for r, c, side, rgb in squares:
        img[:, r:r + side, c:c + side] = torch.tensor(rgb, dtype=torch.float)[:, None, None]
    return img.round().clamp(0, 255).to(torch.uint8)


def test_object_masks_and_paste():
    images = torch.stack([_floor_scene([(10, 10, 8, (200, 30, 30))]), _floor_scene([(40, 40, 6, (30, 30, 200))]),
                          _floor_scene([(12, 12, 8, (30, 200, 30))]), _floor_scene([])])
    masks = object_masks(images)
    want = torch.zeros(64, 64, dtype=torch.bool)
    want[9:19, 9:19] = True  # the 8x8 square, dilated by one pixel
    assert torch.equal(masks[0], want) and masks[3].sum() == 0
    labels = L.encode_batch([["red cube"], ["blue sphere"], ["green cube"], ["gray cube"]])
    x = images.float() / 127.5 - 1
    donors = torch.tensor([0])  # the red square
    g = torch.Generator().manual_seed(0)
    x2, y2 = ET.paste_objects(x, labels, masks, donors, images, labels, masks, 1.0, g)
    assert L.decode(y2) == [["red cube"], ["red cube", "blue sphere"], ["green cube"], ["gray cube", "red cube"]]
    torch.testing.assert_close(x2[1][:, 9:19, 9:19], x[0][:, 9:19, 9:19])  # pasted where the donor had it
    torch.testing.assert_close(x2[1][:, 40:46, 40:46], x[1][:, 40:46, 40:46])  # nothing hidden
    assert torch.equal(x2[2], x[2]) and torch.equal(x2[0], x[0])  # would hide the green square; already red
    x3, y3 = ET.paste_objects(x, labels, masks, donors, images, labels, masks, 0.0, g)
    assert torch.equal(x3, x) and torch.equal(y3, labels)


def test_train_evaluator_tiny_resume_and_skip(tmp_path, monkeypatch, capsys):
    root = write_course_layout(tmp_path / "ds", n=24)
    cfg = ET.EvaluatorTrainConfig(**TINY)
    ref = ET.train_evaluator(root, tmp_path / "ref.pth", cfg, progress=False)
    ref_ckpt = torch.load(ref, weights_only=True)
    assert ref_ckpt["complete"] and ref_ckpt["steps"] == 4 and set(ref_ckpt["model"]) == set(E.expected_shapes())
    assert ref_ckpt["train_width"] == ref_ckpt["config"]["width"] == 32  # auto width on a CPU
    E.Evaluator(ref, device="cpu")  # the course format loads

    # Interrupt a run after 3 augment calls (steps 0-2 done), then resume: same weights as the uninterrupted run.
    calls = {"n": 0}
    real_augment = ET.augment

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_augment(*a, **k)

    monkeypatch.setattr(ET, "augment", flaky)
    out = tmp_path / "ds" / "evaluator.pth"
    with pytest.raises(KeyboardInterrupt):
        ET.train_evaluator(root, config=cfg, progress=False)
    assert not out.exists() and torch.load(out.with_name("evaluator.pth.partial"), weights_only=True)["step"] == 3
    monkeypatch.setattr(ET, "augment", real_augment)
    assert ET.train_evaluator(root, config=cfg, progress=False) == out
    assert "resuming" in capsys.readouterr().out and not out.with_name("evaluator.pth.partial").exists()
    got = torch.load(out, weights_only=True)
    for k, v in ref_ckpt["model"].items():
        torch.testing.assert_close(got["model"][k], v, rtol=0, atol=0, msg=k)

    mtime = out.stat().st_mtime_ns
    ET.train_evaluator(root, config=cfg, progress=False)
    assert "up to date" in capsys.readouterr().out and out.stat().st_mtime_ns == mtime
    ET.train_evaluator(root, config=cfg, progress=False, force=True)
    assert out.stat().st_mtime_ns != mtime


def test_train_evaluator_retrains_when_an_image_changes_and_names_a_broken_one(tmp_path, monkeypatch, capsys):
    root = write_course_layout(tmp_path / "ds", n=24)
    cfg = ET.EvaluatorTrainConfig(**dict(TINY, epochs=1, width=8))
    out, partial = tmp_path / "ev.pth", tmp_path / "ev.pth.partial"
    ET.train_evaluator(root, out, cfg, progress=False)
    key, mtime = torch.load(out, weights_only=True)["data_key"], out.stat().st_mtime_ns

    def no_decode(*args, **kwargs):
        raise AssertionError("an image was decoded although none changed")

    with monkeypatch.context() as m:  # unchanged images: up to date, nothing decoded
        m.setattr(D, "load_image", no_decode)
        capsys.readouterr()
        ET.train_evaluator(root, out, cfg, progress=False)
        assert "up to date" in capsys.readouterr().out and out.stat().st_mtime_ns == mtime

    image = root / "iclevr" / "img_0007.png"
    image.write_bytes(image.read_bytes()[:100])  # truncated: named, nothing written
    with pytest.raises(DataError, match=re.escape(f"{image}: not a readable image (image file is truncated)")):
        ET.train_evaluator(root, out, cfg, progress=False)
    assert out.stat().st_mtime_ns == mtime and not partial.exists()

    Image.new("RGB", (64, 64), (200, 10, 10)).save(image)  # a valid, different image: trained on
    with monkeypatch.context() as m:  # interrupted: the partial state carries the new images' key
        m.setattr(ET, "augment", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            ET.train_evaluator(root, out, cfg, progress=False)
    assert torch.load(partial, weights_only=True)["data_key"] not in (key, None)
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched again: that partial is stale
    capsys.readouterr()
    ET.train_evaluator(root, out, cfg, progress=False)
    printed = capsys.readouterr().out
    assert "ignoring" in printed and "resuming" not in printed and "saved" in printed
    assert torch.load(out, weights_only=True)["data_key"] != key and not partial.exists()


def test_train_variants_and_config_checks(tmp_path, capsys):
    root = write_course_layout(tmp_path / "ds", n=24)
    cfg = ET.EvaluatorTrainConfig(**dict(TINY, epochs=1, optimizer="sgd", lr=0.05, channels_last=True,
                                        resolutions=((1.0, 64),)))
    out = ET.train_evaluator(root, tmp_path / "sgd.pth", cfg, progress=False)
    ev = E.Evaluator(out, device="cpu")
    assert all(v.is_contiguous() for v in ev.model.state_dict().values())
    assert ev.info["config"]["optimizer"] == "sgd" and ev.info["steps"] == 2
    # threads and the save cadence do not change the network: still up to date
    capsys.readouterr()
    ET.train_evaluator(root, out, ET.EvaluatorTrainConfig(**dict(TINY, epochs=1, optimizer="sgd", lr=0.05,
                      channels_last=True, resolutions=((1.0, 64),), threads=2, save_every_minutes=5)), progress=False)
    assert "up to date" in capsys.readouterr().out
    for bad, message in ((dict(optimizer="adam"), "expected 'adamw' or 'sgd'"),
                         (dict(resolutions=((0.5, 32),)), "the last until = 1.0"),
                         (dict(resolutions=((1.0, 8),)), "px >= 16"),
                         (dict(round_trip=1.5), "round_trip: must be in [0, 1]"),
                         (dict(width=65), "width: must be in 1..64")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            ET.EvaluatorTrainConfig(**bad)
    assert 1 <= devices.idle_cores() <= (os.cpu_count() or 1)


def test_idle_cores_reads_the_cpu_now_not_the_load_average(monkeypatch):
    """Right after `make run` renders data the 1-minute load average is still high; it must not cost a thread."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = devices._cpu_busy(0.05)
    assert busy is None or 0 <= busy <= (os.cpu_count() or 1) + 1e-6
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 5.0, cores + 5.0, cores + 5.0))
    monkeypatch.setattr(devices, "_cpu_busy", lambda seconds=0.5: 0.0)
    assert devices.idle_cores() == cores
    monkeypatch.setattr(devices, "_cpu_busy", lambda seconds=0.5: None)  # no /proc/stat: the load average decides
    assert devices.idle_cores() == 1


def test_cli_train_evaluator(tmp_path, capsys):
    root = write_course_layout(tmp_path / "ds", n=24)
    out = tmp_path / "ev.pth"
    argv = ["train-evaluator", "--data", str(root), "--out", str(out), "--epochs", "1", "--batch-size", "8",
            "--max-minutes", "0", "--width", "8", "--device", "cpu", "--seed", "3"]
    assert cli.main(argv) == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["config"]["seed"] == 3 and ckpt["config"]["epochs"] == 1 and ckpt["steps"] == 2
    assert ckpt["train_width"] == 8 and ckpt["model"]["fc.0.weight"].shape == (24, 512)
    E.Evaluator(out, device="cpu")
    assert "saved" in capsys.readouterr().out
    assert cli.main(argv[:-2] + ["--seed", "3"]) == 0 and "up to date" in capsys.readouterr().out
    assert cli.main(argv + ["--batch-size", "0"]) == 1
    assert "batch_size: must be >= 1" in capsys.readouterr().err


def test_find_evaluator_follows_the_data_folder_from_any_directory(tmp_path):
    """Without a data root, the evaluator comes from lab6.data's folder ($LAB6_DATA_DIR), not the current one."""
    import subprocess
    import sys
    (tmp_path / "data" / "iclevr").mkdir(parents=True)
    (tmp_path / "data" / "iclevr" / "checkpoint.pth").write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    r = subprocess.run([sys.executable, "-c", "from lab6.evaluator import find_evaluator; print(find_evaluator())"],
                       cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=120,
                       env={**os.environ, "LAB6_DATA_DIR": str(tmp_path / "data"),
                            "PYTHONPATH": str(Path(E.__file__).parents[1])})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "data" / "iclevr" / "checkpoint.pth")
