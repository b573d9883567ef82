"""The benchmark scripts: --help works, bad options fail cleanly, and tiny end-to-end runs write their files.

The end-to-end runs call the scripts' main() in this process: a fresh interpreter spends most of its time
importing torch and diffusers.
"""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from lab6.evaluator import ResNet18

from .conftest import REPO, write_course_layout

BENCH = REPO / "benchmarks"
SCRIPTS = ("bench_synth.py", "bench_evaluator.py", "bench_quality.py", "bench_sampling.py", "bench_gpu.py",
           "bench_threads.py", "bench_step.py", "bench_fidelity.py")


def run(script: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=240)


def run_in_process(script: str, *args: str) -> str:
    """main(args) of a benchmark script in this process (torch threads, env and diffusers bars restored); stdout."""
    from diffusers.utils import logging as diffusers_logging
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY")
    spec = importlib.util.spec_from_file_location(f"_bench_{Path(script).stem}", BENCH / script)
    module = importlib.util.module_from_spec(spec)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            spec.loader.exec_module(module)
            assert module.main(list(args)) == 0
    finally:
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
        diffusers_logging.enable_progress_bar()
    return buf.getvalue()


def test_fidelity_settings_name_sampler_guidance_per_object_guidance_shift_and_precision():
    spec = importlib.util.spec_from_file_location("_bench_fidelity_settings", BENCH / "bench_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.parse_settings("DDIM-25@2, @3+1,@3:shift,DPM++-20:noshift,SDE-DPM++-18@3,@3:shift:bf16,:bf16") == [
        ("DDIM-25", "ddim", 25, 2.0, None, None, None), (None, None, None, 3.0, 1.0, None, None),
        (None, None, None, 3.0, None, True, None), ("DPM++-20", "dpm", 20, None, None, False, None),
        ("SDE-DPM++-18", "dpm-sde", 18, 3.0, None, None, None), (None, None, None, 3.0, None, True, "bf16"),
        (None, None, None, None, None, None, "bf16")]
    for bad, message in (("EULER@2", "unknown 'EULER'"), ("SDE-DPM++-0", "unknown 'SDE-DPM++-0'"),
                         ("@3+x", "expected NAME@w or NAME@w+o"),
                         ("@3:roll", "expected ':shift' or ':noshift'"),
                         ("@3:shift:noshift", "expected ':shift' or ':noshift', then optionally ':bf16'")):
        with pytest.raises(SystemExit, match=re.escape(message)):
            module.parse_settings(bad)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), "--help"])
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))  # restored afterwards
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_bad_budgets_are_a_one_line_error(tmp_path):
    r = run("bench_quality.py", "--budgets", "10,5", "--out", str(tmp_path / "out"))
    assert r.returncode == 1
    assert r.stderr.strip() == "error: --budgets: must be positive and increasing, got [10.0, 5.0]"
    assert not (tmp_path / "out").exists()


def test_evaluator_ceiling_with_fresh_renders(tmp_path):
    ds = write_course_layout(tmp_path / "ds")
    torch.manual_seed(0)
    torch.save({"model": ResNet18().state_dict()}, ds / "evaluator.pth")  # untrained: misses, and says so
    (ds / "test_gt").mkdir()
    for i, name in enumerate(sorted((ds / "iclevr").iterdir())[:8]):
        (ds / "test_gt" / f"{i}.png").write_bytes(name.read_bytes())
    r = run("bench_evaluator.py", "--data", str(ds), "--renders", "2", "--render-seed", "5",
            "--out", str(tmp_path / "out"))
    assert r.returncode == 1, r.stderr  # an untrained evaluator does not meet the targets
    assert "targets: top-k >= test 0.98, new_test 0.975" in r.stdout and "NOT met" in r.stdout
    lines = r.stdout.splitlines()
    fresh = lines.index(next(line for line in lines if line.startswith("2 fresh renders")))
    rows = {line.split()[0]: line.split() for line in lines[fresh + 2:fresh + 4]}
    assert rows["test"][1] == "16" and rows["new_test"][1] == "16"  # 2 renders x 8 label sets each
    labels = sum(len(s) for s in json.loads((ds / "test.json").read_text())) * 2
    assert rows["test"][3].endswith(f"/{labels})") and rows["test"][5].endswith(f"/{labels})")  # sharp, round trip
    assert rows["test"][-6] == "unrequested" and rows["test"][-5].endswith("/16")  # images with an extra object
    assert rows["test"][-4] == "exact" and 0 <= float(rows["test"][-3]) <= 1   # the shipped checker's reading
    assert "exact-scene accuracy of the checker, pooled" in r.stdout
    assert (tmp_path / "out" / "misses.png").stat().st_size > 1000  # the misses, drawn
    assert "new_test" in r.stdout and "no new_test_gt/ folder" in r.stdout  # sharp table skips what is absent
    bad = run("bench_evaluator.py", "--data", str(ds), "--renders", "-1")
    assert bad.returncode == 2 and "--renders: expected a count >= 0, got -1" in bad.stderr
    second = run("bench_evaluator.py", "--data", str(ds), "--renders", "1", "--look", "second", "--checker", "none",
                 "--out", str(tmp_path / "out2"))
    assert "1 fresh renders of every label set in the second look" in second.stdout, second.stderr[-2000:]


def test_thread_settings_alone_and_two_at_once():
    r = run("bench_threads.py", "--seconds", "0.2", "--settings", "PASSIVE,spin=1000")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()[2:]}
    assert set(rows) == {"PASSIVE", "spin=1000"}
    for alone_ev, alone_unet, pair_ev, pair_unet in rows.values():
        assert float(alone_ev) > 0 and float(alone_unet) > 0
        assert len(pair_ev.split("+")) == 2 and len(pair_unet.split("+")) == 2  # one figure per process
    for bad in ("spin=x", "FAST"):
        r = run("bench_threads.py", "--settings", bad)
        assert r.returncode != 0 and f"unknown setting {bad!r}" in r.stderr


def test_step_breakdown_on_the_tiny_profile():
    """bench_step: the operation count, the step rates and the profiler's split are printed for a profile."""
    r = run("bench_step.py", "--profile", "tiny", "--seconds", "0.05", "--top", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    mflop = re.search(r"forward (\d+) MFLOP per image", r.stdout)
    assert mflop and int(mflop.group(1)) > 0
    figures = {line[:52].strip(): line[52:].strip() for line in r.stdout.splitlines() if len(line) > 52}
    assert float(figures["achieved by the step, GFLOP/s (3x forward)"]) > 0
    assert float(figures["+ batch from uint8, grad clip, EMA (the loop), img/s"]) > 0
    shares = r.stdout.split("(top 3):")[1].strip().splitlines()
    assert len(shares) == 3 and all(line.strip().endswith("%") for line in shares)
    bad = run("bench_step.py", "--seconds", "0")
    assert bad.returncode == 2 and "--seconds: expected > 0" in bad.stderr


def _bench_module(script: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{Path(script).stem}", BENCH / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_profile_variants(tmp_path):
    """--profiles takes variants PROFILE+setting=value (dotted for a name in two sections); bad ones fail early."""
    from argparse import Namespace

    from lab6.errors import ConfigError
    bq = _bench_module("bench_quality.py")
    assert bq.profile_spec("quick+foreground_weight=3+lr=0.003+train.seed=1") == \
        ("quick", {"foreground_weight": 3, "lr": 0.003, "train.seed": 1})
    args = Namespace(data=tmp_path, threads=None, device=None)
    cfg = bq.train_config("quick+foreground_weight=3+lr=0.003+train.seed=1", tmp_path / "r", args, 5.0, 100)
    base = bq.train_config("quick", tmp_path / "r", args, 5.0, 100)
    assert (cfg.train.foreground_weight, cfg.train.lr, cfg.train.seed, cfg.sample.seed) == (3.0, 0.003, 1, 0)
    assert (cfg.train.max_minutes, cfg.train.max_steps, cfg.train.output_dir) == (5.0, 100, str(tmp_path / "r"))
    assert cfg.model == base.model and cfg.train.min_snr_gamma == base.train.min_snr_gamma
    wide = "quick+model.block_out_channels=[64,64,64]+patch_size=2"  # a list value keeps its commas
    assert bq.C.name_list(f"quick,{wide}, seed") == ["quick", wide, "seed"]
    assert bq.train_config(wide, tmp_path / "r", args, 5.0, 100).model.block_out_channels == (64, 64, 64)
    long_a, long_b = wide + "+down_block_types=[" + "DownBlock2D," * 12, wide + "+up_block_types=[" + "UpBlock2D," * 12
    stems = {bq.file_stem(v) for v in (long_a, long_b, wide)}  # run folders and grid names stay short and distinct
    assert len(stems) == 3 and bq.file_stem(wide) == wide and all(len(v) <= 80 for v in stems)
    assert bq.per_profile("--max-steps", "quick+lr=0.003=50,quick=60", ["quick", "quick+lr=0.003"]) == \
        {"quick": 60, "quick+lr=0.003": 50}
    for bad, message in [("quick+lr", "expected PROFILE"), ("quick+seed=1", "ambiguous"), ("quick+nope=1", "unknown"),
                         ("quick+train=1", "single settings"), ("quick+timestep_sampling=sometimes", "expected one of")]:
        with pytest.raises(ConfigError, match=message):
            bq.train_config(bad, tmp_path / "r", args, 5.0, None)
    r = run("bench_quality.py", "--profiles", "tiny+timestep_sampling=importance", "--out", str(tmp_path / "out"))
    assert r.returncode != 0 and "set train.min_snr_gamma" in r.stderr and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory):
    """bench_quality on the tiny profile: two budgets of 0.6 and 1.2 s of training on a 12-image dataset."""
    tmp = tmp_path_factory.mktemp("bench")
    ds = write_course_layout(tmp / "ds")
    torch.manual_seed(0)
    torch.save({"model": ResNet18().state_dict()}, ds / "evaluator.pth")  # untrained: scores, but means nothing
    (ds / "test_gt").mkdir()
    for i, name in enumerate(sorted((ds / "iclevr").iterdir())[:8]):  # stand-ins for the 8 test sets' renders
        (ds / "test_gt" / f"{i}.png").write_bytes(name.read_bytes())
    out, runs = tmp / "quality", tmp / "runs"
    stdout = run_in_process("bench_quality.py", "--profiles", "tiny", "--budgets", "0.01,0.02", "--scales", "1,2",
                            "--data", str(ds), "--splits", "test,unseen_test", "--num-sets", "2", "--max-steps",
                            "100000", "--threads", "1", "--out", str(out), "--runs", str(runs))
    return ds, out, runs, stdout


def test_quality_writes_table_csv_plot_and_machine_info(quality_run):
    ds, out, runs, stdout = quality_run
    assert "unseen_test.json not found; split unseen_test skipped" in stdout
    rows = read_csv(out / "quality.csv")
    dpm = [r for r in rows if r["sampler"] == "DPM++-20"]
    assert len(dpm) == 2 * 2  # budgets x scales, split test only
    native = [r for r in rows if r["sampler"] == "DDIM-10"]  # tiny's own default sampler, at the final budget
    assert [(r["split"], r["guidance"], r["budget_min"]) for r in native] == [("test", "2.0", "0.02")]
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1 and r["labels"] and float(r["sample_seconds"]) > 0
        assert 0 <= float(r["unrequested"]) <= 1  # share of images showing an object no label asked for
    # Time budgets are cumulative within one run, resumed once; training time reaches each budget.
    table = read_csv(out / "quality_table.csv")
    assert [t["budget"] for t in table] == ["0.01", "0.02"]
    assert list(table[0])[-3:] == ["sets", "test@1", "test@2"] and table[0]["sets"] == "2"
    assert 0 < int(table[0]["steps"]) < int(table[1]["steps"])
    info = json.loads((out / "quality.json").read_text())
    segs = info["profiles"]["tiny"]["segments"]
    assert len(segs) == 2 and segs[1]["last_step"] == int(table[1]["steps"])
    for seg, budget in zip(segs, (0.6, 1.2)):
        assert sum(s["train_s"] for s in segs[:segs.index(seg) + 1]) >= budget - 0.1
    assert info["profiles"]["tiny"]["config"]["train"]["max_steps"] == 100000
    assert info["evaluator"]["path"] == str(ds / "evaluator.pth") and info["sets"] == {"tiny": {"test": 2}}
    assert 0 <= info["ground_truth_accuracy"]["test"] <= 1  # the evaluator's ceiling on test_gt/
    assert (runs / "tiny" / "pipeline" / "model_index.json").is_file()
    for key in ("platform", "cpu_count", "torch", "torch_threads"):
        assert info["machine"][key]
    assert "load average" in info["load_start"]["uptime"] and len(info["load_end"]["load_avg"]) == 3
    assert any("cosine" in n for n in info["notes"])
    report = (out / "report.txt").read_text()
    assert "test@2" in report and "DDIM-10" in report
    assert f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}" in report  # the OpenMP setting behind the speeds
    assert Image.open(out / "quality.png").size[0] > 500
    assert len(list((out / "grids").glob("*.png"))) == 2 * 2 + 1


def test_sampling_on_the_tiny_run(quality_run, tmp_path):
    ds, _, runs, _ = quality_run
    out = tmp_path / "sampling"
    run_in_process("bench_sampling.py", "--model", str(runs / "tiny"), "--data", str(ds), "--settings",
                   "DPM++-10,DDIM-25", "--num-images", "2", "--seeds", "0,1", "--threads", "1", "--out", str(out))
    rows = read_csv(out / "sampling.csv")
    # tiny's default guidance is 2; each setting runs with it and without guidance, for both seeds
    assert [(x["setting"], x["guidance"], x["seed"]) for x in rows] == [
        (s, w, seed) for w in ("2.0", "1.0") for s in ("DPM++-10", "DDIM-25") for seed in ("0", "1")]
    assert all(x["images"] == "2" and float(x["seconds"]) > 0 for x in rows)
    assert all(float(x["unrequested"]) in (0.0, 0.5, 1.0) for x in rows)  # 0, 1 or 2 of the 2 images
    info = json.loads((out / "sampling.json").read_text())
    assert info["model"]["default_guidance"] == 2.0 and info["guidance"] == [2.0, 1.0]
    assert len(info["summary"]) == 4 and info["machine"]["torch_threads"] >= 1
    assert "acc w=2 (default)" in (out / "report.txt").read_text() and "extra w=2" in (out / "report.txt").read_text()



def test_fidelity_on_the_tiny_run(quality_run, tmp_path):
    ds, _, runs, _ = quality_run
    out = tmp_path / "fidelity"
    text = run_in_process("bench_fidelity.py", "--models", str(runs / "tiny"), "--data", str(ds), "--seeds", "0-1",
                          "--settings", "DDIM-25@2", "--judges", "default:default,default:default", "--out", str(out))
    rows = read_csv(out / "fidelity.csv")
    splits = [s for s in ("test", "new_test") if (ds / f"{s}.json").is_file()]
    assert [(r["model"], r["judges"], r["split"]) for r in rows] == \
        [("ground truth", j, s) for j in ("#1", "#2") for s in splits] + \
        [(str(runs / "tiny"), j, s) for j in ("#1", "#2") for s in splits]
    truth, model = rows[0], rows[2 * len(splits)]
    same = rows[3 * len(splits)]  # the second pair of judges (the same files) reads the same images alike
    assert {k: v for k, v in same.items() if k != "judges"} == {k: v for k, v in model.items() if k != "judges"}
    assert float(truth["grain"]) > 0 and float(model["grain"]) > 0  # power at the 4-pixel grid against the truth's
    assert truth["top-k"] and float(model["exact"]) <= 1 and model["setting"] == "DDIM-25@2"
    assert float(model["FID"]) > float(truth["FID"])  # an untrained model lies further from the renders
    info = json.loads((out / "results.json").read_text())
    assert info["seeds"] == [0, 1] and info["runs"][2]["fake"] == info["images"] and info["runs"][2]["kid_subset"] >= 2
    assert len(info["judges"]) == 2 and [r["judges"] for r in info["runs"]] == [1, 2, 1, 2]
    assert (out / "tiny-DDIM-25-w2.png").stat().st_size > 1000 and "wrote" in text

def test_gpu_session_script_runs_its_jobs_on_the_cpu(tmp_path):
    """bench_gpu's jobs with tiny settings on the CPU (how it is checked before it spends GPU time): each job
    writes its result, steps follow the CPU speed ratios, and the summary names every job."""
    ds = write_course_layout(tmp_path / "ds")
    torch.manual_seed(0)
    torch.save({"model": ResNet18().state_dict()}, ds / "evaluator.pth")  # untrained: scores, but means nothing
    out = tmp_path / "g"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--data", str(ds), "--out", str(out),
                        "--device", "cpu", "--profile", "tiny", "--jobs", "evsweep,sweep,curve",
                        "--ev-variants", "w16-20ep", "--variants", "tiny", "--curve-variants", "tiny",
                        "--cpu-img-per-s", "74", "--ev-cpu-img-per-s", "16=900",
                        "--ev-scenes-scale", "0.001", "--ev-cpu-minutes", "0.01", "--cpu-minutes", "0.05",
                        "--curve-minutes", "0.1", "--curve-every", "0.05", "--sweep-seeds", "0", "--deadline", "300"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["exit_codes"] == {"evsweep:w16-20ep": 0, "sweep:tiny": 0, "curve:tiny": 0}
    sweep = res["sweep:tiny"]
    assert sweep["train"]["steps"] == round(0.05 * 60 * 74 / 8)  # what the CPU does in 0.05 min at 74 img/s
    assert set(sweep["eval"]["accuracy"]) == {"test", "new_test"}
    assert [v["step"] for v in res["curve:tiny"]["train"]["validation"]][:2] == [28, 56]
    assert res["evsweep:w16-20ep"]["config"]["width"] == 16 and res["evsweep:w16-20ep"]["info"]["steps"] >= 1
    summary = (out / "summary.txt").read_text()
    assert all(job in summary for job in res["exit_codes"])


def test_gpu_session_script_trains_full_quick_and_evaluator_on_the_cpu(tmp_path):
    """bench_gpu's `evaluator`, `full` and `quick` jobs with tiny settings: the quick job takes a recipe spec
    (its warm-up and scheduler reach the run's saved config), the full job scores with the evaluator the
    `evaluator` job trained, and the summary prints both."""
    import yaml
    ds = write_course_layout(tmp_path / "ds")
    out = tmp_path / "g"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # YAML reads a bare no as false
    spec = "tiny+train.lr_scheduler=warmup_stable_decay+train.lr_warmup_steps=3+train.mixed_precision='no'"
    r = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--data", str(ds), "--out", str(out),
                        "--device", "cpu", "--jobs", "evaluator,full,quick", "--full-profile", "tiny",
                        "--full-steps", "4", "--full-seeds", "0,1", "--quick-profile", spec, "--quick-steps", "6",
                        "--eval-scenes", "8", "--eval-width", "8", "--eval-epochs", "1", "--render-workers", "1",
                        "--deadline", "300"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["exit_codes"] == {"evaluator": 0, "full": 0, "quick": 0}
    assert res["full"]["eval"]["evaluator"] == str(out / "evaluator" / "evaluator.pth")
    assert res["full"]["eval"]["seeds"] == [0, 1] and res["full"]["train"]["steps"] == 4
    assert res["quick"]["spec"] == spec and res["quick"]["train"]["steps"] == 6
    saved = yaml.safe_load(next((out / "quick").glob("*/config.yaml")).read_text())
    assert saved["train"]["lr_scheduler"] == "warmup_stable_decay" and saved["train"]["lr_warmup_steps"] == 3
    assert saved["train"]["max_steps"] == 6 and saved["train"]["mixed_precision"] == "no"
    summary = (out / "summary.txt").read_text()
    assert "full (tiny)" in summary and "quick (tiny)" in summary and "evaluator (full width)" in summary


def test_gpu_step_budgets_take_the_cpu_speeds_as_options():
    """bench_gpu's sweep and curve recipes are profiles with settings; each one's CPU speed is given (one figure
    or one per recipe), and a job without its speed is refused before anything starts."""
    from argparse import Namespace
    sys.path.insert(0, str(BENCH))
    import bench_gpu

    jobs = ["sweep:quick", "sweep:quick+lr=0.001", "curve:quick", "evaluator"]
    args = Namespace(cpu_img_per_s="80", ev_cpu_img_per_s="16=900,32=450", ev_variants="w16-20ep,w32-40ep")
    assert bench_gpu.cpu_rates(args, jobs) == {"quick": 80.0, "quick+lr=0.001": 80.0}
    args.cpu_img_per_s = "quick=80,quick+lr=0.001=75.5"
    assert bench_gpu.cpu_rates(args, jobs) == {"quick": 80.0, "quick+lr=0.001": 75.5}
    assert bench_gpu.ev_cpu_rates(args) == {16: 900.0, 32: 450.0}
    args.cpu_img_per_s = "quick=80"
    with pytest.raises(SystemExit, match="no CPU training speed for quick\\+lr=0.001"):
        bench_gpu.cpu_rates(args, jobs)
    args.ev_cpu_img_per_s = "16=900"
    with pytest.raises(SystemExit, match=r"width\(s\) \[32\]"):
        bench_gpu.ev_cpu_rates(args)
    assert bench_gpu.job_folder(Path("o"), "sweep:quick+lr=0.001") == Path("o/sweep-quick+lr=0.001")
    r = run("bench_gpu.py", "--out", "/nonexistent/never-made", "--device", "cpu", "--jobs", "sweep")
    assert r.returncode != 0 and "--cpu-img-per-s: no CPU training speed for quick" in r.stderr
