"""Determinism: the same seed and options give the same bytes, in a fresh process and in this one."""
from __future__ import annotations

import torch

from tests.cli_world import finish, run_cli, sample_args


def test_synth_is_byte_identical_for_a_seed(tmp_path, capsys):
    """`lab6 synth --seed S` twice gives the same bytes in every file; another seed gives other images."""
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        rc, err = run_cli(["synth", "--out", tmp_path / name, "--scenes", 2, "--size", 16, "--seed", seed,
                        "--workers", 1], capsys)
        assert rc == 0, err

    def contents(folder):
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    a, b, c = (contents(tmp_path / n) for n in "abc")
    assert a == b and len(a) > 100
    assert a["iclevr/synth_000000_0.png"] != c["iclevr/synth_000000_0.png"]


def test_cpu_sampling_is_identical_across_runs(world, tmp_path, capsys, monkeypatch):
    """`lab6 sample --seed S` in a fresh process and in this one (its global RNG moved on) writes the same PNG
    bytes. (Another --batch-size changes the floats by ~1e-6, which can flip the rounding of a pixel.)"""
    monkeypatch.chdir(tmp_path)  # no evaluator found here, as in the subprocess's folder: both runs only sample
    torch.manual_seed(12345)
    torch.rand(3)
    rc, err = run_cli([*sample_args(world), "--out", tmp_path / "b"], capsys)
    assert rc == 0, err
    rc, err = finish(world.procs["sample"])
    assert rc == 0, err[-2000:]
    a = sorted((world.bg / "a" / "test").iterdir())
    b = sorted((tmp_path / "b" / "test").iterdir())
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 8
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert (world.bg / "a" / "test_grid.png").read_bytes() == (tmp_path / "b" / "test_grid.png").read_bytes()
