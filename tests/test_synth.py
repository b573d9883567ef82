"""The CLEVR-style renderer and the dataset writer: determinism, layout, labels, test splits, --like."""
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lab6 import labels as L
from lab6 import synth as S
from lab6.data import TEST_SPLITS, CourseData, IclevrDataset
from lab6.errors import ConfigError, DataError, LabelError
from lab6.plots import sample_grid
from lab6.synth.render import _SceneRenderer
from lab6.synth.writer import _like_scenes
from tests.conftest import REPO

PAL = {c: np.array(v, float) / np.linalg.norm(v) for c, v in S.PALETTE.items()}


def nearest_colour(pixels: np.ndarray) -> str:
    """The palette colour whose RGB direction is closest to the median of `pixels` (N, 3)."""
    med = np.median(pixels.astype(float), axis=0)
    v = med / np.linalg.norm(med)
    return max(PAL, key=lambda c: float(v @ PAL[c]))


def read_tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 4-scene dataset rendered with one worker."""
    out = tmp_path_factory.mktemp("synth") / "a"
    info = S.write_dataset(out, scenes=4, seed=5, workers=1, progress=False)
    return out, info


def test_layout_reads_with_the_data_layer(small):
    out, info = small
    data = CourseData(out)
    data.check_images()
    assert len(data.train) == 12 and info["train_images"] == 12 and info["scenes"] == 4
    assert data.splits() == ["test", "new_test", "unseen_test"]
    for split in data.splits():
        sets = data.label_sets(split)
        assert len(sets) == 32
        for i, _labels in enumerate(sets):  # a ground-truth render of every test set
            assert Image.open(out / f"{split}_gt" / f"{i}.png").size == (64, 64)
    ds = IclevrDataset(out, cache=False)
    assert ds.images.shape == (12, 3, 64, 64)
    x, y = ds[0]
    assert y.sum() == 1 and -1 <= x.min() and x.max() <= 1
    # scenes grow one object at a time; no set repeats a colour+shape
    for i in range(4):
        sets = [data.train[f"synth_{i:06d}_{k}.png"] for k in range(3)]
        assert [len(s) for s in sets] == [1, 2, 3]
        assert sets[1][:1] == sets[0] and sets[2][:2] == sets[1]
        assert len(set(sets[2])) == 3


def test_same_seed_same_bytes_for_any_worker_count(small, tmp_path):
    out, _ = small
    S.write_dataset(tmp_path / "b", scenes=4, seed=5, workers=1, progress=False)
    S.write_dataset(tmp_path / "c", scenes=4, seed=5, workers=2, progress=False)
    a, b, c = read_tree(out), read_tree(tmp_path / "b"), read_tree(tmp_path / "c")
    assert len(a) == 12 + 96 + 6  # images, ground-truth renders, 5 JSON files and the state file
    assert a == b == c
    S.write_dataset(tmp_path / "d", scenes=4, seed=6, workers=1, progress=False)
    d = read_tree(tmp_path / "d")
    assert d["iclevr/synth_000000_0.png"] != a["iclevr/synth_000000_0.png"]


def test_interrupted_run_finishes_only_the_missing_files(small, tmp_path):
    import shutil
    out, _ = small
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for rel in ("iclevr/synth_000002_1.png", "test_gt/7.png", "train.json", "unseen_test.json"):
        (copy / rel).unlink()
    info = S.write_dataset(copy, scenes=4, seed=5, workers=1, progress=False)
    assert info["rendered"] == 2
    assert read_tree(copy) == read_tree(out)


def test_other_options_into_the_same_folder_are_refused(small):
    out, _ = small
    with pytest.raises(ConfigError, match="other options"):
        S.write_dataset(out, scenes=4, seed=6, workers=1, progress=False)


def test_course_folder_is_not_overwritten(course_dir):
    with pytest.raises(ConfigError, match="not made by `lab6 synth`"):
        S.write_dataset(course_dir, scenes=2, progress=False)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"scenes": 0}, ConfigError, "--scenes 0"),
    ({"size": 8}, ConfigError, "--size 8: images must be at least 16 px"),
    ({"workers": -1}, ConfigError, "--workers -1"),
    ({"seed": -3}, ConfigError, "--seed -3"),
])
def test_bad_options(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        S.write_dataset(tmp_path / "x", **{"scenes": 2, **kwargs}, progress=False)


def test_drawn_objects_have_the_labelled_colour_and_nothing_else_is_drawn():
    cfg = S.SynthConfig()
    min_px = cfg.min_visible_px * 0.5  # interior pixels (fully covered) of the smallest allowed object
    for i in range(40):
        names = S.sample_train_labels(S.scene_rng(11, 1, i), 3, set())
        res = S.render_scene(names, S.scene_rng(11, 2, i), cfg, coverage=True)
        assert [o.name for o in res.objects] == names
        for k, (img, cov) in enumerate(zip(res.images, res.coverage)):
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and cov.shape == (k + 1, 64, 64)
            for j, ob in enumerate(res.objects[:k + 1]):
                inside = cov[j] >= 0.99
                assert inside.sum() >= min_px, (names, k, j)
                assert nearest_colour(img[inside]) == ob.colour, (names, k, j)
            floor = img[cov.sum(0) == 0].astype(int)  # every pixel no object touches is neutral gray
            assert (floor.max(1) - floor.min(1)).max() <= 2


def test_gray_objects_stand_out_from_the_floor():
    contrast = []
    for i in range(12):
        res = S.render_scene(["gray cube", "gray sphere", "gray cylinder"], S.scene_rng(2, 2, i), coverage=True)
        img, cov = res.images[-1].astype(float), res.coverage[-1]
        floor = np.median(img[cov.sum(0) == 0], axis=0).mean()
        for j in range(3):
            contrast.append(abs(np.median(img[cov[j] >= 0.99], axis=0).mean() - floor))
    assert min(contrast) > 25, contrast


def test_objects_never_intersect_and_stay_in_frame():
    cfg = S.SynthConfig()
    for i in range(30):
        sc = _SceneRenderer(S.scene_rng(4, 2, i), cfg)
        assert all(sc.add(n) for n in S.sample_train_labels(S.scene_rng(4, 1, i), 3, set()))
        for a, b in itertools.combinations([h.ob for h in sc.hits], 2):
            assert np.hypot(a.x - b.x, a.y - b.y) >= a.footprint + b.footprint
        for h in sc.hits:
            i0, i1, j0, j1 = h.rect
            border = np.zeros_like(h.hit)
            border[[0, -1], :] = border[:, [0, -1]] = True
            touches = (i0 == 0 or j0 == 0 or i1 == 64 * cfg.supersample or j1 == 64 * cfg.supersample)
            assert not (touches and (h.hit & border).any())


def test_any_size_on_request():
    res = S.render_scene(["red sphere", "blue cube"], S.scene_rng(0, 2, 0), S.SynthConfig(size=40))
    assert [im.shape for im in res.images] == [(40, 40, 3), (40, 40, 3)]


def test_unseen_test_is_unseen_and_new_test_binds(small):
    out, info = small
    # held-out pairs are independent of the scene count: check against many sampled training scenes too
    unseen, held = S.sample_held_out(5)
    train = json.loads((out / "train.json").read_text())
    sampled = [S.sample_train_labels(S.scene_rng(5, 1, i), 3, held) for i in range(3000)]
    seen_pairs = set().union(*(S.object_pairs(s) for s in list(train.values()) + sampled))
    unseen_file = json.loads((out / "unseen_test.json").read_text())
    assert unseen_file == unseen and len(unseen) == 32
    for labels in unseen:
        assert 2 <= len(labels) <= 3
        assert not (S.object_pairs(labels) & seen_pairs), labels  # no two of its objects ever appear together
    assert {frozenset(p) for p in info["held_out_pairs"]} == held
    # every object still appears in training, with most partners
    assert {o for s in sampled for o in s} == set(L.OBJECTS)
    assert len(seen_pairs) == 276 - len(held)
    new = json.loads((out / "new_test.json").read_text())
    assert len(new) == 32 and len({frozenset(s) for s in new}) == 32
    assert all(S.is_binding_heavy(s) for s in new)
    shared_colour = sum(len({n.split()[0] for n in s}) < len(s) for s in new)
    shared_shape = sum(len({n.split()[1] for n in s}) < len(s) for s in new)
    assert shared_colour >= 24 and shared_shape >= 12
    assert all(not (S.object_pairs(s) & held) for s in new)
    test = json.loads((out / "test.json").read_text())
    assert {len(s) for s in test} == {1, 2, 3} and all(not (S.object_pairs(s) & held) for s in test)
    assert sum(S.is_binding_heavy(s) for s in test) < shared_colour  # the plain test binds far less


def write_like_file(tmp_path, entries: dict) -> Path:
    path = tmp_path / "like" / "train.json"
    path.parent.mkdir()
    path.write_text(json.dumps(entries))
    return path


LIKE = {
    "CLEVR_train_000007_0.png": ["cyan cube"],
    "CLEVR_train_000007_1.png": ["cyan cube", "cyan sphere"],
    "CLEVR_train_000007_2.png": ["cyan cube", "cyan sphere", "brown cylinder"],
    "CLEVR_train_000009_0.png": ["gray sphere"],
    "CLEVR_train_000009_1.png": ["red cube", "blue cube"],  # does not extend _0: its own scene
    "odd_name.png": ["yellow cylinder", "green cube"],
}


def test_like_reproduces_names_labels_and_scene_structure(tmp_path):
    like = write_like_file(tmp_path, LIKE)
    train, jobs = _like_scenes(like)
    chains = sorted([f.split("/")[-1] for f, _ in j.files] for j in jobs)
    assert chains == [["CLEVR_train_000007_0.png", "CLEVR_train_000007_1.png", "CLEVR_train_000007_2.png"],
                      ["CLEVR_train_000009_0.png"], ["CLEVR_train_000009_1.png"], ["odd_name.png"]]
    out = tmp_path / "out"
    info = S.write_dataset(out, seed=1, workers=1, like=like, progress=False)
    assert json.loads((out / "train.json").read_text()) == LIKE
    assert list(json.loads((out / "train.json").read_text())) == list(LIKE)  # same order too
    assert info["scenes"] == 4
    CourseData(out).check_images()
    imgs = {n: np.asarray(Image.open(out / "iclevr" / n)) for n in LIKE}
    # _1 is _0 plus one object: same camera and lights, so most pixels are unchanged; other scenes differ
    same = (imgs["CLEVR_train_000007_0.png"] == imgs["CLEVR_train_000007_1.png"]).all(-1).mean()
    other = (imgs["CLEVR_train_000009_0.png"] == imgs["CLEVR_train_000009_1.png"]).all(-1).mean()
    assert same > 0.6 and other < 0.3, (same, other)
    # the unseen sets avoid every pair of this small train.json
    seen = set().union(*(S.object_pairs(s) for s in LIKE.values()))
    assert info["unseen_definition"] == "pairs"
    assert all(not (S.object_pairs(s) & seen) for s in json.loads((out / "unseen_test.json").read_text()))


def test_like_course_slice(tmp_path, course_labels_dir):
    course = json.loads((course_labels_dir / "train.json").read_text())
    names = list(course)[:24]
    like = write_like_file(tmp_path, {n: course[n] for n in names})
    out = tmp_path / "out"
    info = S.write_dataset(out, seed=0, workers=2, like=like, progress=False)
    assert json.loads((out / "train.json").read_text()) == {n: course[n] for n in names}
    assert info["scenes"] == 8  # course names come in complete _0/_1/_2 scenes
    CourseData(out).check_images()


def test_like_course_test_files_are_reused(tmp_path, course_labels_dir):
    like = write_like_file(tmp_path, LIKE)
    for split in ("test", "new_test"):
        (like.parent / f"{split}.json").write_text((course_labels_dir / f"{split}.json").read_text())
    out = tmp_path / "out"
    S.write_dataset(out, seed=0, workers=1, like=like, progress=False)
    for split in ("test", "new_test"):
        assert json.loads((out / f"{split}.json").read_text()) == \
            json.loads((course_labels_dir / f"{split}.json").read_text())


def test_unseen_falls_back_to_triples_when_every_pair_was_seen():
    every_pair = [list(p) for p in itertools.combinations(L.OBJECTS, 2)]
    sets, how = S.unseen_from_train(every_pair, seed=0)
    assert how == "triples" and len(sets) == 32 and all(len(s) == 3 for s in sets)


@pytest.mark.parametrize("content, error, message", [
    ({"a_0.png": ["red sphere", "pink cube"]}, LabelError, r"train.json: entry 'a_0.png'\[1\]: unknown object 'pink cube'"),
    ({"../x_0.png": ["red sphere"]}, LabelError, r"entry '../x_0.png': expected a plain file name"),
    ([["red sphere"]], LabelError, "expected a JSON object"),
])
def test_like_label_errors_name_file_and_entry(tmp_path, content, error, message):
    like = write_like_file(tmp_path, content)
    with pytest.raises(error, match=message):
        S.write_dataset(tmp_path / "out", like=like, progress=False)


def test_like_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.json: --like file not found"):
        S.write_dataset(tmp_path / "out", like=tmp_path / "nope.json", progress=False)


def test_cli_renders_and_reports_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lab6", "synth", "--out", str(tmp_path / "d"), "--scenes", "1",
                        "--workers", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "3 training images in 1 scenes" in r.stdout
    assert json.loads((tmp_path / "d" / "train.json").read_text())["synth_000000_2.png"]
    r = subprocess.run([sys.executable, "-m", "lab6", "synth", "--out", str(tmp_path / "e"), "--size", "8"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("error: --size 8")


def test_default_synth_fingerprint_is_the_renderers_default(tmp_path):
    """lab6.data knows the default render by a digest (the judges import no renderer): it must match lab6.synth."""
    from lab6 import data as D
    assert D.synth_fingerprint(S.RENDER_VERSION, S.SynthConfig().record()) == D.DEFAULT_SYNTH_FINGERPRINT
    assert D.synth_fingerprint(S.RENDER_VERSION, S.SynthConfig(size=32).record()) != D.DEFAULT_SYNTH_FINGERPRINT


def test_sample_grid_figure(small):
    out, _ = small
    fig = sample_grid(out, n=8, ncol=4)
    assert len([ax for ax in fig.axes if ax.images]) == 8


def test_all_pairs_training_set_shows_held_out_pairs_and_keeps_the_test_files(tmp_path):
    """`all_pairs=True` is an evaluator's training set: unseen_test's pairs appear, the test files are the same."""
    import itertools
    import json

    from lab6.synth import write_dataset

    a = write_dataset(tmp_path / "all", scenes=60, seed=0, size=16, workers=1, progress=False, all_pairs=True)
    b = write_dataset(tmp_path / "held", scenes=60, seed=0, size=16, workers=1, progress=False)
    for split in TEST_SPLITS:
        assert (tmp_path / "all" / f"{split}.json").read_text() == (tmp_path / "held" / f"{split}.json").read_text()
    held = {frozenset(p) for p in b["held_out_pairs"]}
    assert a["held_out_pairs"] == [] and len(held) == 24
    shown = {frozenset(p) for s in json.loads((tmp_path / "all" / "train.json").read_text()).values()
             for p in itertools.combinations(s, 2)}
    assert shown & held


def test_binding_scenes_replace_a_share_of_the_scenes_and_never_show_a_test_set(tmp_path):
    """`binding=0.5`: about half the scenes share a colour or a shape in new_test's patterns, no held-out pair and
    no test set among the training images' label sets; the other scenes, and the test files, are binding=0's."""
    from lab6.synth.design import is_binding_heavy, object_pairs
    from lab6.synth.writer import _plan_scenes

    plain, mixed = _plan_scenes(400, 0, False), _plan_scenes(400, 0, False, 0.5)
    assert plain[2] == mixed[2]
    train = mixed[0]
    last = {name.rsplit("_", 1)[0]: labels for name, labels in train.items()}  # each scene's whole label set
    changed = [scene for scene, labels in last.items() if plain[0].get(f"{scene}_2.png") != labels]
    assert 0.4 < len(changed) / len(last) < 0.6
    assert all(2 <= len(last[s]) <= 3 and is_binding_heavy(last[s]) for s in changed)
    assert all(plain[0][n] == labels for n, labels in train.items() if n.rsplit("_", 1)[0] not in changed)
    tests = {frozenset(labels) for sets in mixed[2].values() for labels in sets}
    assert not any(frozenset(labels) in tests for n, labels in train.items() if n.rsplit("_", 1)[0] in changed)
    assert not set().union(*(object_pairs(labels) for labels in train.values())) & mixed[3]


@pytest.mark.parametrize("binding, message", [(1.5, "--binding 1.5: give the share of binding scenes, a number from 0"),
                                              (-0.1, "--binding -0.1: give the share")])
def test_a_binding_share_outside_0_1_is_refused_before_anything_is_written(tmp_path, binding, message):
    with pytest.raises(ConfigError, match=message):
        S.write_dataset(tmp_path / "d", scenes=2, seed=0, size=16, workers=1, progress=False, binding=binding)
    assert not (tmp_path / "d").exists()
