import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from lab6 import data as D
from lab6 import labels as L
from lab6.errors import DataError, LabelError


def test_dataset_loads_course_layout(course_dir):
    ds = D.IclevrDataset(course_dir, resolution=32)
    assert len(ds) == 12 and ds.images.shape == (12, 3, 32, 32) and ds.images.dtype == torch.uint8
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert y.shape == (24,) and y.sum() >= 1
    assert (course_dir / ".cache").is_dir()  # decoded once, cached
    ds2 = D.IclevrDataset(course_dir, resolution=32)
    assert torch.equal(ds.images, ds2.images)


def test_image_modes_and_sizes_are_converted(tmp_path):
    for mode, size in (("RGBA", 80), ("L", 64), ("P", 40), ("RGB", 64)):
        p = tmp_path / f"{mode}.png"
        Image.new(mode, (size, size), color=120 if mode in ("L", "P") else (10, 20, 30, 255)[:len(mode)]).save(p)
        a = D.load_image(p, 64)
        assert a.shape == (64, 64, 3) and a.dtype == np.uint8


def test_bad_images_are_named(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="junk.png: not a readable image"):
        D.load_image(tmp_path / "junk.png")
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:30])
    with pytest.raises(DataError, match="cut.png"):
        D.load_image(tmp_path / "cut.png")


def test_missing_images_are_reported(course_dir):
    for p in sorted((course_dir / "iclevr").glob("*.png"))[:3]:
        p.unlink()
    with pytest.raises(DataError, match=r"3 of 12 images listed in train.json are missing \(first: img_0000.png"):
        D.IclevrDataset(course_dir)


def _caches(root):
    """The decoded-image cache files of a dataset folder, with their modification times."""
    return {p.name: p.stat().st_mtime_ns for p in (root / ".cache").glob("*.npy")}


def test_the_fingerprint_follows_train_json_the_resolution_and_each_image_stat(course_dir):
    data = D.CourseData(course_dir)
    fp = D.training_fingerprint(data, 32)
    assert fp == D.training_fingerprint(data, 32) and len(fp) == 64
    assert D.training_fingerprint(data, 64) != fp and D.training_fingerprint(data) != fp
    image = course_dir / "iclevr" / "img_0004.png"
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # same bytes, touched
    assert D.training_fingerprint(data, 32) != fp
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert D.training_fingerprint(data, 32) == fp
    with open(image, "ab") as f:
        f.write(b"\0")
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))  # one byte longer, same mtime
    assert D.training_fingerprint(data, 32) != fp


def test_a_truncated_image_fails_the_next_load_naming_it(course_dir):
    D.IclevrDataset(course_dir, resolution=32)
    cached = _caches(course_dir)
    bad = course_dir / "iclevr" / "img_0005.png"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError, match=re.escape(f"{bad}: not a readable image (image file is truncated)")):
        D.IclevrDataset(course_dir, resolution=32)
    assert _caches(course_dir) == cached  # nothing written


def test_an_image_replaced_by_another_loads_the_new_pixels(course_dir):
    first = D.IclevrDataset(course_dir, resolution=32)
    new = course_dir / "iclevr" / "img_0005.png"
    Image.new("RGB", (48, 48), (200, 10, 10)).save(new)
    ds = D.IclevrDataset(course_dir, resolution=32)
    assert torch.equal(ds.images[5], torch.from_numpy(D.load_image(new, 32)).permute(2, 0, 1))
    assert not torch.equal(ds.images[5], first.images[5]) and torch.equal(ds.images[:5], first.images[:5])
    assert len(_caches(course_dir)) == 1  # the stale cache is removed once the new one is written


def test_an_image_rewritten_at_the_same_size_is_caught_by_its_mtime(course_dir):
    image = course_dir / "iclevr" / "img_0002.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image, compress_level=0)
    D.IclevrDataset(course_dir, resolution=64)
    st = image.stat()
    other = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(other).save(image, compress_level=0)  # uncompressed: the same size in bytes
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # however coarse the clock, a later mtime
    assert image.stat().st_size == st.st_size
    assert np.array_equal(D.IclevrDataset(course_dir, resolution=64).images[2].permute(1, 2, 0).numpy(), other)


def test_unchanged_images_are_read_from_the_cache_without_decoding(course_dir, tmp_path, monkeypatch):
    first = D.IclevrDataset(course_dir, resolution=32)
    copy = tmp_path / "copy"
    shutil.copytree(course_dir, copy)  # keeps the cache and every image's size and mtime

    def no_decode(*args, **kwargs):
        raise AssertionError("an image was decoded although none changed")

    monkeypatch.setattr(D, "load_image", no_decode)
    assert torch.equal(D.IclevrDataset(course_dir, resolution=32).images, first.images)
    assert torch.equal(D.IclevrDataset(copy, resolution=32).images, first.images)


def test_cli_train_on_a_copy_with_a_truncated_image_exits_1_naming_it(course_dir, tmp_path, capsys):
    from lab6.cli import main
    from lab6.config import load_config

    D.IclevrDataset(course_dir, resolution=load_config("tiny").model.sample_size)  # trained on once: cached
    copy = tmp_path / "copy"
    shutil.copytree(course_dir, copy)
    bad = copy / "iclevr" / "img_0003.png"
    bad.write_bytes(bad.read_bytes()[:100])
    cached = _caches(copy)
    rc = main(["train", "--data", str(copy), "--profile", "tiny", "--max-steps", "2", "--out", str(tmp_path / "run"),
               "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 1 and err[-1] == f"error: {bad}: not a readable image (image file is truncated)"
    assert not (tmp_path / "run").exists() and _caches(copy) == cached


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON (line 1"),
    ('[["red cube"]]', "expected a JSON object"),
    ('{"a.png": ["red cube", "red cube"]}', "entry 'a.png'[1]: duplicate object"),
    ('{"a.png": []}', "entry 'a.png': empty label set"),
    ('{}', "no training images"),
])
def test_train_json_errors(tmp_path, content, message):
    p = tmp_path / "train.json"
    p.write_text(content)
    with pytest.raises(LabelError) as info:
        D.read_train(p)
    assert message in str(info.value) and str(p) in str(info.value)


@pytest.mark.parametrize("content, message", [
    ('{"a": 1}', "expected a JSON list of label sets"),
    ('[["red cube"], ["blue cub"]]', "entry 1[0]: unknown object 'blue cub'; did you mean 'blue cube'"),
    ('[["red cube"], "red cube"]', "entry 1: expected a list"),
    ('[]', "no label sets"),
])
def test_label_file_errors(tmp_path, content, message):
    p = tmp_path / "test.json"
    p.write_text(content)
    with pytest.raises(LabelError) as info:
        D.read_label_file(p)
    assert message in str(info.value)


def test_objects_json_must_match_course_order(tmp_path):
    p = tmp_path / "objects.json"
    swapped = dict(L.OBJECT_TO_INDEX, **{"gray cube": 1, "red cube": 0})
    p.write_text(json.dumps(swapped))
    with pytest.raises(LabelError, match="'gray cube' has index 1, the course order needs 0"):
        D.read_objects(p)
    p.write_text(json.dumps({k: v for k, v in L.OBJECT_TO_INDEX.items() if k != "red cube"}))
    with pytest.raises(LabelError, match="missing 1 of the 24 objects"):
        D.read_objects(p)
    p.write_text(json.dumps(dict(L.OBJECT_TO_INDEX, **{"pink cube": 24})))
    with pytest.raises(LabelError, match="'pink cube' is not one of the 24"):
        D.read_objects(p)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        D.CourseData(tmp_path / "nope")
    with pytest.raises(DataError, match="train.json: file not found"):
        D.CourseData(tmp_path)


def test_image_folder_round_trip(tmp_path):
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    for i, a in enumerate(D.to_uint8(x)):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    y = D.load_image_folder(tmp_path, 3)
    assert y.shape == (3, 3, 64, 64) and (y - x).abs().max() <= 1 / 127.5 + 1e-6
    with pytest.raises(DataError, match="1 of 4 images missing"):
        D.load_image_folder(tmp_path, 4)


def test_course_label_files(course_labels_dir):
    data = D.CourseData(course_labels_dir)  # objects.json validated on open
    assert len(data.train) == 18009
    counts = [sum(1 for v in data.train.values() if len(v) == k) for k in (1, 2, 3)]
    assert counts == [6003, 6003, 6003]
    test, new_test = data.label_sets("test"), data.label_sets("new_test")
    assert (len(test), len(new_test)) == (32, 32)
    assert (sum(map(len, test)), sum(map(len, new_test))) == (72, 84)
    assert L.encode_batch(new_test).shape == (32, 24)


def test_atomic_writes_have_normal_permissions(tmp_path):
    import os
    import stat

    from lab6.io import atomic_dir, write_json
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask
