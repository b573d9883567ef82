"""The dataset writer: render a synthetic dataset in the iCLEVR layout, resumably.

A folder's `.synth.json` records what decides its bytes (renderer version, seed, settings, scene list); a later
run with the same options renders only the missing files, and one with other options is refused.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import labels as L
from ..data import SYNTH_STATE, TEST_SPLITS, read_label_file, read_train
from ..devices import cpu_count
from ..errors import ConfigError, DataError, LabelError
from ..io import check_writable_dir, ensure_writable_dir, write_bytes, write_json
from .design import (
    sample_binding_labels,
    sample_held_out,
    sample_new_test,
    sample_test,
    sample_train_labels,
    unseen_from_train,
)
from .render import RENDER_VERSION, encode_png, render_scene
from .scene import S_BINDING, S_GT, S_LABELS, S_RENDER, SynthConfig, look_config, scene_rng

_COURSE_NAME = re.compile(r"^(?P<scene>.+)_(?P<step>\d+)\.png$")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
EVALUATOR_NAME = "checkpoint.pth"  # the course's evaluator beside its data; `evaluator=` copies one there


@dataclass
class RenderJob:
    """One scene to render: its random key, object names in addition order, and (file, step) to save."""

    key: tuple[int, ...]
    names: list[str]
    files: list[tuple[str, int]]  # (path relative to the output folder, index of the image in the scene)


def _like_scenes(path: Path) -> tuple[dict[str, list[str]], list[RenderJob]]:
    """Read a train.json and group its files into incremental scenes (names like 'x_0.png', 'x_1.png', ...)."""
    if not path.is_file():
        raise DataError(f"{path}: --like file not found; give a train.json such as the course's")
    train = read_train(path)  # validated: errors name the file and the entry
    groups: dict[str, list[tuple[int, str]]] = {}
    singles: list[str] = []
    for fname in train:
        if "/" in fname or "\\" in fname or fname.strip(".") == "":
            raise LabelError(f"{path}: entry {fname!r}: expected a plain file name such as 'CLEVR_train_000001_0.png'")
        m = _COURSE_NAME.match(fname)
        if m:
            groups.setdefault(m.group("scene"), []).append((int(m.group("step")), fname))
        else:
            singles.append(fname)
    chains: list[list[str]] = []
    for scene in groups.values():
        scene.sort()
        chain: list[str] = []
        last = None
        for step, fname in scene:
            if chain and step == last + 1 and _extends(train[chain[-1]], train[fname]):
                chain.append(fname)
            else:
                if chain:
                    chains.append(chain)
                chain = [fname]
            last = step
        chains.append(chain)
    chains += [[f] for f in singles]
    chains.sort(key=lambda c: c[0])
    jobs = []
    for idx, chain in enumerate(chains):
        names = list(train[chain[0]])
        for fname in chain[1:]:
            names += [o for o in train[fname] if o not in names]
        first = len(train[chain[0]]) - 1
        jobs.append(RenderJob((S_RENDER, idx), names, [(f"iclevr/{f}", first + k) for k, f in enumerate(chain)]))
    return train, jobs


def _extends(before: list[str], after: list[str]) -> bool:
    """True when `after` is `before` plus exactly one object."""
    return len(after) == len(before) + 1 and set(before) <= set(after)


def render_job(args) -> int:
    """Render one scene and write its missing files; returns the number of images written."""
    seed, cfg, job, out = args
    res = render_scene(job.names, scene_rng(seed, *job.key), cfg)
    written = 0
    for rel, step in job.files:
        path = os.path.join(out, rel)
        if not os.path.exists(path):
            write_bytes(path, encode_png(res.images[step], rgba=cfg.rgba))
            written += 1
    return written


def render_jobs(jobs: list[RenderJob], seed: int, cfg: SynthConfig, out: str | os.PathLike, workers: int = 0,
                progress: bool = True, desc: str = "render") -> tuple[int, int, int]:
    """Render the scenes of `jobs` that miss a file under `out`, in `workers` processes (0 = all cores).

    Returns (scenes rendered, images written, processes used).
    """
    out = Path(out)
    todo = [j for j in jobs if not all((out / rel).exists() for rel, _ in j.files)]
    remaining = sum(1 for j in todo for rel, _ in j.files if not (out / rel).exists())
    nproc = max(1, min(workers or cpu_count(), len(todo) or 1))
    written = 0
    if not todo:
        return 0, 0, nproc
    args = [(seed, cfg, j, str(out)) for j in todo]
    with tqdm(total=remaining, unit="img", desc=desc, disable=not progress, smoothing=0.05) as bar:
        if nproc == 1:
            for a in args:
                k = render_job(a)
                written += k
                bar.update(k)
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(nproc) as pool:
                for k in pool.imap_unordered(render_job, args, chunksize=8):
                    written += k
                    bar.update(k)
    return len(todo), written, nproc


def _check_int(name: str, value, low: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"--{name} {value!r}: {hint}")
    return int(value)


def parse_size(size) -> tuple[int, int]:
    """(height, width) of `--size`: a side (64, '64') or 'WIDTHxHEIGHT' ('320x240', the course's); width 0 = square."""
    if isinstance(size, str):
        m = _SIZE.match(size)
        if m:
            width, height = int(m.group(1)), int(m.group(2))
            if min(width, height) < 16 or max(width, height) > 1024:
                raise ConfigError(f"--size {size}: width and height must be 16 to 1024 px (e.g. 320x240)")
            return height, 0 if width == height else width
        if not size.strip().isdigit():
            raise ConfigError(f"--size {size!r}: use a side in pixels such as 64, or WIDTHxHEIGHT such as 320x240")
        size = int(size)
    side = _check_int("size", size, 16, "images must be at least 16 px wide (e.g. 64)")
    if side > 1024:
        raise ConfigError(f"--size {side}: at most 1024 px is supported")
    return side, 0


def _check_evaluator(evaluator: str | os.PathLike | None, out: Path) -> bytes | None:
    """The bytes of the evaluator checkpoint to copy into `out`; refuses a missing file or another one already there."""
    if evaluator is None:
        return None
    path = Path(evaluator)
    if not path.is_file():
        raise DataError(f"--evaluator-from {path}: file not found; give an evaluator checkpoint such as "
                        f"pretrained/evaluator/checkpoint.pth")
    data = path.read_bytes()
    there = out / EVALUATOR_NAME
    if there.exists() and (not there.is_file() or there.read_bytes() != data):
        raise ConfigError(f"--evaluator-from {path}: {there} already holds another evaluator; use another --out "
                          f"or delete it")
    return data


# ---------------------------------------------------------------- planning a dataset
def _plan_scenes(scenes: int, seed: int, all_pairs: bool, binding: float = 0.0):
    """Training scenes of `scenes` random label sets (no held-out pair unless `all_pairs`) and the three test sets.

    A share `binding` of the scenes (drawn per scene) instead shows a binding pattern like new_test's, none of its
    label sets a test set; the other scenes are the ones `binding=0` gives.
    Returns (train.json's mapping, render jobs, test sets by split, held-out pairs, unseen_test's definition).
    """
    unseen, held = sample_held_out(seed)
    splits = {"test": sample_test(seed, held), "new_test": sample_new_test(seed, held), "unseen_test": unseen}
    train_held = set() if all_pairs else held
    avoid = {frozenset(labels) for sets in splits.values() for labels in sets}
    train, jobs = {}, []
    for i in range(scenes):
        if binding and scene_rng(seed, S_BINDING, i).random() < binding:
            names = sample_binding_labels(scene_rng(seed, S_BINDING, 1, i), train_held, avoid)
        else:
            names = sample_train_labels(scene_rng(seed, S_LABELS, i), L.MAX_OBJECTS, train_held)
        files = []
        for k in range(len(names)):
            fname = f"synth_{i:06d}_{k}.png"
            train[fname] = names[:k + 1]
            files.append((f"iclevr/{fname}", k))
        jobs.append(RenderJob((S_RENDER, i), names, files))
    return train, jobs, splits, held, "pairs"


def _plan_like(like: Path, seed: int):
    """The scenes of an existing train.json (`--like`), its test.json/new_test.json when beside it, and an
    unseen_test drawn against its label sets; returns what `_plan_scenes` does."""
    train, jobs = _like_scenes(like)
    splits = {}
    for split in ("test", "new_test"):
        sibling = like.parent / f"{split}.json"
        if sibling.is_file():
            splits[split] = read_label_file(sibling)
    held: set = set()
    splits.setdefault("test", sample_test(seed, held))
    splits.setdefault("new_test", sample_new_test(seed, held))
    splits["unseen_test"], unseen_how = unseen_from_train(list(train.values()), seed)
    return train, jobs, splits, held, unseen_how


def _state(seed: int, cfg: SynthConfig, scenes: int | None, like: Path | None, all_pairs: bool,
           look: str = "default", binding: float = 0.0) -> dict:
    """What decides a folder's bytes: renderer version, seed, settings (and their look's name) and the scene list."""
    st = {"renderer": RENDER_VERSION, "seed": seed, "config": cfg.record()}
    if look != "default":
        st["look"] = look
    if like is None:
        st["scenes"] = scenes
    else:
        st["like"] = hashlib.sha1(like.read_bytes()).hexdigest()
    if all_pairs:
        st["all_pairs"] = True
    if binding:
        st["binding"] = binding
    return st


def _claim_folder(out: Path, state: dict) -> None:
    """Record `state` in out/.synth.json; refuse a folder holding renders made with other options."""
    state_path = out / SYNTH_STATE
    if state_path.exists():
        try:
            old = json.loads(state_path.read_text())
        except (OSError, ValueError):
            old = None
        if old != state:
            diff = {k: v for k, v in state.items() if not isinstance(old, dict) or old.get(k) != v}
            raise ConfigError(f"{out}: holds a render made with other options (differs in {sorted(diff)}); "
                              f"use another --out or delete the folder")
    elif (out / "train.json").exists() or (out / "iclevr").is_dir():
        raise ConfigError(f"{out}: already holds a dataset not made by `lab6 synth` with these options; "
                          f"use an empty folder")
    else:
        write_json(state_path, state)


# ---------------------------------------------------------------- writing it
def write_dataset(out: str | os.PathLike, scenes: int = 6000, seed: int = 0, size: int | str = 64, workers: int = 0,
                  like: str | os.PathLike | None = None, progress: bool = True,
                  cfg: SynthConfig | None = None, all_pairs: bool = False, look: str = "default",
                  rgba: bool = False, evaluator: str | os.PathLike | None = None, binding: float = 0.0) -> dict:
    """Render a CLEVR-style dataset in the iCLEVR layout under `out`; returns a summary dict.

    `all_pairs=True` lets training scenes show every object pair (the test files stay the same): a training
    set for an evaluator, which must recognise the pairs that unseen_test asks for. `binding` (0-1) is the share
    of training scenes drawn from new_test's binding patterns (colours shared across shapes, shapes across
    colours), never a test set: data that asks a model to tell same-colour or same-shape objects apart.

    `look` names the renderer's settings (scene.LOOKS; `cfg` instead gives all but size and rgba), `size` is a side or
    'WIDTHxHEIGHT', `rgba` writes RGBA PNGs, and `evaluator` is copied to out/checkpoint.pth (the course's name):
    `look="second", size="320x240", rgba=True, evaluator=<the shipped one>` stands in for the course's data.

    Writes iclevr/*.png and <split>_gt/<i>.png first, then objects.json, the test files and train.json last
    (so train.json's presence means the render finished). Files already present are kept: an interrupted
    run, re-run with the same options, renders only what is missing.
    """
    seed = _check_int("seed", seed, 0, "use a non-negative integer")
    height, width = parse_size(size)
    workers = _check_int("workers", workers, 0, "use 0 (all cores) or a positive number of processes")
    shape = {"size": height, "width": width, "rgba": bool(rgba)}
    if cfg is not None and look != "default":
        raise ConfigError(f"--look {look!r}: `cfg` gives every setting already; leave look out")
    cfg = look_config(look, **shape) if cfg is None else SynthConfig(**{**asdict(cfg), **shape})
    cfg.check()
    like_path = Path(like) if like is not None else None
    if like_path is None:
        scenes = _check_int("scenes", scenes, 1, "render at least 1 scene (each gives 3 images)")
    if isinstance(binding, bool) or not isinstance(binding, (int, float)) or not 0 <= binding <= 1:
        raise ConfigError(f"--binding {binding!r}: give the share of binding scenes, a number from 0 to 1")
    if binding and like_path is not None:
        raise ConfigError(f"--binding {binding}: --like renders another file's scenes; leave one of them out")
    check_writable_dir(out)  # created only once the plan below has checked every input
    judge = _check_evaluator(evaluator, Path(out))

    # plan: label sets and jobs
    if like_path is not None:
        train, jobs, splits, held, unseen_how = _plan_like(like_path, seed)
    else:
        train, jobs, splits, held, unseen_how = _plan_scenes(scenes, seed, all_pairs, binding)
    for si, split in enumerate(TEST_SPLITS):
        for i, labels in enumerate(splits[split]):
            jobs.append(RenderJob((S_GT, si, i), list(labels), [(f"{split}_gt/{i}.png", len(labels) - 1)]))

    # refuse to mix renders made with other options into one folder
    out = ensure_writable_dir(out)
    _claim_folder(out, _state(seed, cfg, None if like_path else scenes, like_path, all_pairs, look, binding))

    # render what is missing
    for sub in ["iclevr"] + [f"{s}_gt" for s in TEST_SPLITS]:
        (out / sub).mkdir(exist_ok=True)
    _, written, nproc = render_jobs(jobs, seed, cfg, out, workers, progress, desc=f"synth {out}")

    # the evaluator, then the label files last: their presence means everything is there
    if judge is not None and not (out / EVALUATOR_NAME).exists():
        write_bytes(out / EVALUATOR_NAME, judge)
    write_json(out / "objects.json", L.OBJECT_TO_INDEX)
    for split in TEST_SPLITS:
        write_json(out / f"{split}.json", splits[split])
    write_json(out / "train.json", train)
    return {"out": str(out), "train_images": len(train), "scenes": len([j for j in jobs if j.key[0] == S_RENDER]),
            "test_sets": {s: len(splits[s]) for s in TEST_SPLITS}, "images": sum(len(j.files) for j in jobs),
            "rendered": written, "workers": nproc, "unseen_definition": unseen_how, "look": look,
            "evaluator": str(out / EVALUATOR_NAME) if judge is not None else None,
            "held_out_pairs": [] if all_pairs else sorted(sorted(p) for p in held)}
