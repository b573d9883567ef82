"""The renderer's second look: a stand-in for the course's images (320x240 RGBA, its own light, camera, object
size and materials) in the course layout, with the shipped evaluator as its checkpoint.pth."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lab6 import data as D
from lab6 import synth as S
from lab6.cli import main
from lab6.errors import ConfigError, DataError
from lab6.evaluator import SHIPPED_EVALUATOR, find_evaluator
from tests.conftest import REPO
from tests.test_synth import nearest_colour

STAND_IN = ["--look", "second", "--size", "320x240", "--rgba", "--evaluator-from", str(SHIPPED_EVALUATOR)]


def synth(out, *options, scenes: int = 1):
    """`lab6 synth --out OUT --scenes N --workers 1 OPTIONS...` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "lab6", "synth", "--out", str(out), "--scenes", str(scenes),
                           "--workers", "1", *options], cwd=REPO, capture_output=True, text=True, timeout=300)


def scene(cfg: S.SynthConfig, i: int, coverage: bool = False) -> S.SceneRender:
    """Scene i of seed 0 (label sets and scene stream as `write_dataset` draws them) under `cfg`."""
    names = S.sample_train_labels(S.scene_rng(0, 1, i), 3, set())
    return S.render_scene(names, S.scene_rng(0, 2, i), cfg, coverage=coverage)


def test_default_look_is_the_default_renderer():
    assert S.look_config("default") == S.SynthConfig()
    assert S.SynthConfig().record() == json.loads(json.dumps(S.SynthConfig().record()))  # JSON types, as stored
    assert not set(S.SynthConfig().record()) & set(S.scene.LATER_FIELDS)  # the fingerprint of the default renders
    second = S.look_config("second").record()
    assert D.synth_fingerprint(S.RENDER_VERSION, second) != D.DEFAULT_SYNTH_FINGERPRINT


def test_second_look_differs_for_the_same_scene_yet_keeps_every_colour():
    second = S.look_config("second")
    for i in range(4):
        a, b = scene(S.SynthConfig(), i).images[-1].astype(float), scene(second, i, coverage=True)
        img = b.images[-1].astype(float)
        assert np.abs(a - img).mean() > 15, i                   # another camera, light and placement
        floor_a, floor_b = np.median(a[:8].reshape(-1, 3), 0), np.median(img[:8].reshape(-1, 3), 0)
        assert floor_b.mean() < floor_a.mean() - 5              # dimmer ...
        assert floor_b[0] - floor_b[2] > floor_a[0] - floor_a[2] + 8  # ... and warmer
        for j, ob in enumerate(b.objects):                      # each object still shows its labelled colour
            inside = b.coverage[-1][j] >= 0.99
            assert inside.sum() >= 10 and nearest_colour(img[inside]) == ob.colour, (i, j)
    objects = [ob for i in range(12) for ob in scene(second, i).objects]
    assert sum(ob.material == "metal" for ob in objects) > len(objects) / 2  # seven in ten are metal
    assert {ob.radius for ob in objects} <= {second.radius_large, second.radius_small}
    assert second.radius_small > S.SynthConfig().radius_small * 1.1


def test_non_square_images():
    cfg = S.look_config("second", size=60, width=80)
    res = scene(cfg, 0, coverage=True)
    assert [im.shape for im in res.images] == [(60, 80, 3)] * 3 and res.coverage[-1].shape == (3, 60, 80)
    assert S.parse_size("320x240") == (240, 320) and S.parse_size("64x64") == (64, 0) and S.parse_size("48") == (48, 0)
    png = Image.open(io.BytesIO(S.encode_png(res.images[-1], rgba=True)))
    assert png.mode == "RGBA" and png.size == (80, 60) and np.asarray(png)[..., 3].min() == 255


def test_render_labels_in_a_look():
    sets = [["red sphere"], ["cyan cube", "gray cylinder"]]
    default = S.render_labels(sets, seed=3)
    assert np.array_equal(default, S.render_labels(sets, seed=3, look="default"))
    second = S.render_labels(sets, seed=3, look="second", size=30, width=40)
    assert default.shape == (2, 64, 64, 3) and second.shape == (2, 30, 40, 3)
    assert D.resize_rgb(second[0]).shape == (64, 64, 3)
    with pytest.raises(ConfigError, match="--look 'third'"):
        S.render_labels(sets, look="third")


def test_stand_in_root_in_one_command(tmp_path):
    """The stand-in for the course's data: its layout, 320x240 RGBA images, no default synth, the shipped judge."""
    out = tmp_path / "standin"
    r = synth(out, *STAND_IN)
    assert r.returncode == 0, r.stderr
    assert "(second look)" in r.stdout and "evaluator" in r.stdout
    for name in ("train.json", "test.json", "new_test.json", "objects.json"):
        assert (out / name).is_file(), name
    D.read_objects(out / "objects.json")  # the course vocabulary in the course order
    train = D.read_train(out / "train.json")
    assert list(train) == [f"synth_000000_{k}.png" for k in range(3)]
    assert [len(v) for v in train.values()] == [1, 2, 3]
    assert len(D.read_label_file(out / "test.json")) == 32 and len(D.read_label_file(out / "new_test.json")) == 32
    with Image.open(out / "iclevr" / "synth_000000_2.png") as im:
        assert im.mode == "RGBA" and im.size == (320, 240)
    ds = D.IclevrDataset(out, cache=False)
    assert ds.images.shape == (3, 3, 64, 64)
    assert D.is_synthetic(out) and not D.is_default_synth(out)
    assert json.loads((out / D.SYNTH_STATE).read_text())["look"] == "second"
    assert (out / "checkpoint.pth").read_bytes() == SHIPPED_EVALUATOR.read_bytes()
    assert find_evaluator(data_root=out) == out / "checkpoint.pth"
    again = S.write_dataset(out, scenes=1, size="320x240", look="second", rgba=True, evaluator=SHIPPED_EVALUATOR,
                            workers=1, progress=False)
    assert again["rendered"] == 0  # the same options again find everything there
    with pytest.raises(ConfigError, match="other options"):  # the default look into it: refused
        S.write_dataset(out, scenes=1, size="320x240", rgba=True, workers=1, progress=False)


@pytest.mark.parametrize("options, message", [
    (["--look", "third"], "error: --look 'third': use one of default, second"),
    (["--size", "320x"], "error: --size '320x': use a side in pixels such as 64, or WIDTHxHEIGHT"),
    (["--size", "320x8"], "error: --size 320x8: width and height must be 16 to 1024 px"),
    (["--evaluator-from", "nope.pth"], "error: --evaluator-from nope.pth: file not found"),
    (["--evaluator-from", "pretrained/checker/checker.pth"],
     "error: --evaluator-from pretrained/checker/checker.pth: not the course's ResNet-18"),
])
def test_bad_options_leave_nothing(tmp_path, monkeypatch, capsys, options, message):
    monkeypatch.chdir(REPO)
    assert main(["synth", "--out", str(tmp_path / "x"), "--scenes", "1", "--workers", "1", *options]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_api_errors(tmp_path):
    with pytest.raises(ConfigError, match="--look 'Second': use one of default, second"):
        S.write_dataset(tmp_path / "a", scenes=1, look="Second", progress=False)
    with pytest.raises(ConfigError, match="--look 'second': `cfg` gives every setting"):
        S.write_dataset(tmp_path / "a", scenes=1, look="second", cfg=S.SynthConfig(), progress=False)
    with pytest.raises(DataError, match="--evaluator-from"):
        S.write_dataset(tmp_path / "a", scenes=1, evaluator=tmp_path / "none.pth", progress=False)
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint.pth").write_bytes(b"another judge")
    with pytest.raises(ConfigError, match="already holds another evaluator"):
        S.write_dataset(tmp_path / "b", scenes=1, evaluator=SHIPPED_EVALUATOR, progress=False)
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["checkpoint.pth"]
    with pytest.raises(ConfigError, match="metal_share 1.5: use a number from 0 to 1"):
        S.look_config("second", metal_share=1.5)
