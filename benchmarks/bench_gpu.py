"""One prepared GPU session: many training runs at once, with step budgets of what a CPU does in as many minutes.

The GPU picks the recipes that the CPU then confirms.

    python benchmarks/bench_gpu.py --data data/synth --out OUT --device cuda [--jobs evaluator,full,quick,...]

Jobs run as separate processes on the one GPU (`--jobs`; a group name expands to one job per recipe):

* `evaluator`: renders an all-pairs training set and trains the course's ResNet-18 at full width, then
  measures its ceiling on the ground-truth renders of `--data`. The jobs that score samples wait for it.
* `evsweep`: the CPU evaluator recipes of `EV_VARIANTS` (narrow widths), each trained for the steps the CPU
  does in `--ev-cpu-minutes` at the speed `--ev-cpu-img-per-s` gives for its width, and their ceilings.
* `sweep`: the recipes of `--variants` (profiles with settings, `quick+lr=0.001`, as bench_quality's
  `--profiles`), each trained for the steps the CPU does for it in `--cpu-minutes` at the speed
  `--cpu-img-per-s` gives for it (its LR schedule ends there), scored with DPM-Solver++ 20 steps over
  guidance 1-5.
* `curve`: one long run per `--curve-variants` recipe, validated every `--curve-every` CPU-minute equivalents
  on all three splits: accuracy against CPU-minutes beyond what a CPU session can measure.
* `sampling`: `bench_sampling.py` on `--model` (every sampler, default guidance and none, `--seeds`).
* `full`, `quick`: the `full` profile's speed and accuracy, and a long `quick` run.

Each job writes OUT/<job>[-<recipe>]/result.json; the orchestrator stops every job at `--deadline` seconds, prints one
table and writes OUT/results.json and OUT/summary.txt. Every job also runs on the CPU with tiny settings
(`--profile tiny ...`), which is how this script is tested before it spends GPU time.

A step budget stands for minutes of one CPU only through that CPU's training speed, so the speeds are options,
never constants: measure them on the CPU in question (bench_quality's `img/s` column, or bench_step), idle,
with the threads it will train with.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

REPO = C.REPO

SCALES = (1.0, 2.0, 3.0, 4.0, 5.0)
# CPU evaluator recipes: (name, EvaluatorTrainConfig overrides, all-pairs scenes). Each trains for what the
# CPU does in --ev-cpu-minutes at its width (--ev-cpu-img-per-s) or for its epochs, whichever ends first.
EV_VARIANTS = (
    ("w16-20ep", {"width": 16, "epochs": 20}, 6000),
    ("w16-40ep", {"width": 16, "epochs": 40}, 6000),
    ("w16-40ep-paste-1", {"width": 16, "epochs": 40, "paste": 1.0}, 6000),
    ("w16-40ep-lr-4e-3", {"width": 16, "epochs": 40, "lr": 4e-3}, 6000),
    ("w16-40ep-sgd", {"width": 16, "epochs": 40, "optimizer": "sgd", "lr": 0.1}, 6000),
    ("w16-40ep-12k", {"width": 16, "epochs": 40}, 12000),
    ("w24-40ep", {"width": 24, "epochs": 40}, 6000),
    ("w32-40ep", {"width": 32, "epochs": 40}, 6000),
)


def by_name(table, names: str | None):
    """The rows of a variant table named in a comma list (all when None)."""
    if not names:
        return list(table)
    wanted = names.split(",")
    known = {row[0]: row for row in table}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise SystemExit(f"error: unknown variant(s) {missing}; known: {sorted(known)}")
    return [known[n] for n in wanted]


def job_folder(out: Path, job: str) -> Path:
    """OUT/<kind> or OUT/<kind>-<recipe or variant>, the recipe cut to a file-name-safe length."""
    from bench_quality import file_stem
    kind, _, variant = job.partition(":")
    return out / (f"{kind}-{file_stem(variant)}" if variant else kind)


def cpu_rates(args, jobs: list[str]) -> dict[str, float]:
    """--cpu-img-per-s for every recipe of the `sweep` and `curve` jobs: {recipe: CPU training img/s}."""
    from bench_quality import per_profile

    from lab6.errors import ConfigError
    recipes = list(dict.fromkeys(j.partition(":")[2] for j in jobs if j.startswith(("sweep:", "curve:"))))
    try:
        rates = per_profile("--cpu-img-per-s", args.cpu_img_per_s, recipes, cast=float)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    missing = [r for r, v in rates.items() if v is None]
    if missing:
        raise SystemExit(f"error: --cpu-img-per-s: no CPU training speed for {', '.join(missing)}; give RATE or "
                         f"RECIPE=RATE,... (images per second of the CPU whose minutes the step budgets stand for)")
    return rates


def ev_cpu_rates(args) -> dict[int, float]:
    """--ev-cpu-img-per-s 'WIDTH=RATE,...' -> {width: CPU training img/s of the evaluator at that width}."""
    try:
        rates = {int(w): float(r) for w, r in (part.split("=") for part in (args.ev_cpu_img_per_s or "").split(",")
                                               if part)}
    except ValueError:
        raise SystemExit(f"error: --ev-cpu-img-per-s: expected WIDTH=RATE,..., got {args.ev_cpu_img_per_s!r}") from None
    widths = {over["width"] for _, over, _ in by_name(EV_VARIANTS, args.ev_variants)}
    missing = sorted(w for w in widths if rates.get(w, 0) <= 0)
    if missing:
        raise SystemExit(f"error: --ev-cpu-img-per-s: no CPU training speed > 0 for width(s) {missing}")
    return rates


def evaluator_for(out: Path, fallback: str, wait_s: float = 600) -> Path:
    """The evaluator trained by the `evaluator` job once it has finished (waiting for it), else `fallback`."""
    done = out / "evaluator" / "result.json"
    t0 = time.time()
    while (out / "evaluator.started").exists() and not done.exists() and time.time() - t0 < wait_s:
        time.sleep(3)
    trained = out / "evaluator" / "evaluator.pth"
    return trained if trained.exists() else Path(fallback)


def evaluate(model_dir: Path, data_root: Path, evaluator: Path, device: str, scales, steps: int = 20,
             seeds=(0, 1), samplers: bool = False) -> dict:
    """Accuracy of a trained model: DPM-Solver++ `steps` over guidance scales and seeds, per split."""
    import torch

    from lab6.compare import sampler_comparison, timed_accuracy
    from lab6.data import CourseData
    from lab6.evaluator import Evaluator
    from lab6.sample import load_pipeline

    data = CourseData(data_root)
    pipe = load_pipeline(model_dir, device)
    ev = Evaluator(evaluator, device=device)
    out = {"evaluator": str(evaluator), "dpm_steps": steps, "seeds": list(seeds), "accuracy": {},
           "seconds_per_32": {}}
    for split in data.splits():
        sets = data.label_sets(split)
        out["accuracy"][split] = {}
        for w in scales:
            runs = [timed_accuracy(pipe, sets, ev, s, sampler="dpm", num_steps=steps, guidance_scale=w)
                    for s in seeds]
            out["accuracy"][split][str(w)] = round(sum(r["accuracy"] for r in runs) / len(runs), 4)
            out["seconds_per_32"][str(w)] = round(runs[-1]["seconds"] * 32 / len(sets), 3)
    if samplers:
        best = max(scales, key=lambda w: out["accuracy"]["test"][str(w)])
        out["samplers_at_best_scale"] = {"guidance": best, **sampler_comparison(pipe, data.label_sets("test"), ev, best)}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out


def train_job(name: str, profile: str, overrides: dict, out: Path, data: Path, device: str, max_steps: int,
              max_minutes: float | None, threads: int, extra_train: dict | None = None) -> tuple[Path, dict]:
    """Train one configuration with lab6.train.train; returns the run folder and a speed summary."""
    import torch

    from lab6.config import load_config
    from lab6.train import train

    torch.set_num_threads(threads)
    train_over = {"output_dir": str(out / name), "data_root": str(data), "device": device, "max_steps": max_steps,
                  "max_minutes": max_minutes, "num_threads": threads,
                  "checkpoint_every": max(10, max_steps // 4), "validate_every": 0, "validate_num": 0,
                  **(extra_train or {})}
    over = {k: dict(v) if isinstance(v, dict) else v for k, v in overrides.items()}
    if "lr_warmup_steps" not in over.get("train", {}) and "lr_warmup_steps" not in over:
        # warmup: the profile's share of its own schedule, applied to this one
        base = load_config(profile, **{k: v for k, v in over.items() if k != "train"})
        warm = base.train.lr_warmup_steps / base.train.max_steps
        train_over.setdefault("lr_warmup_steps", max(2, round(warm * max_steps)))
    over["train"] = {**over.get("train", {}), **train_over}
    cfg = load_config(profile, **over)
    t0 = time.time()
    try:
        run = train(cfg, progress=False)
    except Exception as e:  # e.g. bf16 trouble on an untested card: retry once in fp32 rather than lose the job
        if cfg.train.mixed_precision == "no" or not device.startswith("cuda"):
            raise
        print(f"{name}: {type(e).__name__}: {e}; retrying with mixed_precision='no'", flush=True)
        over["train"].update(output_dir=str(out / f"{name}-fp32"), mixed_precision="no")
        cfg = load_config(profile, **over)
        run = train(cfg, progress=False)
    return run, train_summary(run, profile, time.time() - t0)


def train_summary(run: Path, profile: str, wall_s: float) -> dict:
    """Steps, speed and in-loop validation figures of one training run folder."""
    from lab6.plots import read_metrics
    recs = read_metrics(run / "metrics.jsonl")
    speeds = [r["img_per_s"] for r in recs if "img_per_s" in r]
    return {"profile": profile, "steps": max((r["step"] for r in recs), default=0), "wall_s": round(wall_s, 1),
            "img_per_s_first": speeds[1] if len(speeds) > 1 else (speeds[0] if speeds else None),
            "img_per_s_median": sorted(speeds)[len(speeds) // 2] if speeds else None,
            "gpu_mem_gb": max((r.get("gpu_mem_gb", 0) for r in recs), default=0),
            "validation": [{k: v for k, v in r.items() if k == "step" or k.endswith("_acc")}
                           for r in recs if any(k.endswith("_acc") for k in r)]}


def cpu_steps(minutes: float, img_per_s: float, batch: int) -> int:
    """Training steps of batch `batch` that the CPU does in `minutes` at `img_per_s`."""
    return max(2, round(minutes * 60 * img_per_s / batch))


def run_job(args) -> None:
    """One job in this process: train, evaluate, write <out>/<job>/result.json."""
    from bench_quality import file_stem, profile_overrides

    from lab6.config import load_config
    from lab6.data import TEST_SPLITS

    out = Path(args.out)
    data, dev = Path(args.data), args.device
    kind, _, variant = args.job.partition(":")
    result: dict = {"job": args.job}
    folder = job_folder(out, args.job)

    def save():
        _write(folder / "result.json", result)

    if kind == "evaluator":
        result.update(evaluator_job(args, folder))
    elif kind == "evsweep":
        (name, over, scenes), = by_name(EV_VARIANTS, variant)
        result.update(evsweep_job(args, folder, over, scenes, ev_cpu_rates(args)))
    elif kind == "full":
        run, result["train"] = train_job("full", args.full_profile, {}, folder, data, dev, args.full_steps,
                                         args.full_minutes, args.threads)
        result["eval"] = evaluate(run / "pipeline", data, evaluator_for(out, args.evaluator), dev,
                                  (1.0, 2.0, 4.0), steps=25, seeds=tuple(args.full_seeds))
    elif kind == "quick":
        spec = args.quick_profile or args.profile
        base, over = profile_overrides(spec)
        result["spec"] = spec
        run, result["train"] = train_job("quick", base, over, folder, data, dev, args.quick_steps,
                                         args.quick_minutes, args.threads)
        result["eval"] = evaluate(run / "pipeline", data, evaluator_for(out, args.evaluator), dev, SCALES,
                                  steps=25, seeds=(0, 1, 2), samplers=True)
    elif kind == "sweep":
        base, over = profile_overrides(variant)
        batch = load_config(base, **over).train.batch_size
        rate = cpu_rates(args, expand(args.jobs, args))[variant]
        steps = cpu_steps(args.cpu_minutes, rate, batch)
        result["cpu_minutes"], result["cpu_img_per_s"], result["batch_size"] = args.cpu_minutes, rate, batch
        run, result["train"] = train_job(file_stem(variant), base, over, folder, data, dev, steps, None, args.threads)
        save()
        result["eval"] = evaluate(run / "pipeline", data, evaluator_for(out, args.evaluator), dev, SCALES,
                                  seeds=tuple(args.sweep_seeds))
    elif kind == "curve":
        base, over = profile_overrides(variant)
        batch = load_config(base, **over).train.batch_size
        rate = cpu_rates(args, expand(args.jobs, args))[variant]
        steps = cpu_steps(args.curve_minutes, rate, batch)
        every = cpu_steps(args.curve_every, rate, batch)
        ev = evaluator_for(out, args.evaluator)  # in-loop validation scores with it from the first check on
        result.update(cpu_minutes=args.curve_minutes, every_cpu_minutes=args.curve_every, every_steps=every,
                      guidance=args.curve_guidance, evaluator=str(ev))
        over = {**over, "sample": {**over.get("sample", {}), "guidance_scale": args.curve_guidance}}
        t0 = time.time()
        run, result["train"] = train_job(
            file_stem(variant), base, over, folder, data, dev, steps, None, args.threads,
            extra_train={"validate_every": every, "validate_num": 32, "evaluator": str(ev),
                         "validate_splits": TEST_SPLITS, "checkpoint_every": steps})
        result["train"]["wall_s"] = round(time.time() - t0, 1)
    elif kind == "sampling":
        import bench_sampling
        model = args.model or str(REPO / "pretrained" / "quick")
        ev = evaluator_for(out, args.evaluator)
        code = bench_sampling.main(["--model", model, "--data", str(data), "--evaluator", str(ev),
                                    "--device", dev, "--seeds", ",".join(map(str, args.sampling_seeds)),
                                    "--out", str(folder / "bench"), "--threads", str(args.threads)])
        result["exit"] = code
        result["report"] = (folder / "bench" / "report.txt").read_text() if (folder / "bench" / "report.txt").exists() else None
    else:
        raise SystemExit(f"error: unknown job {args.job!r}")
    save()


def ceiling(ev, data_root: Path) -> dict:
    """Accuracy of an evaluator on the ground-truth renders of each split, sharp and 64->32->64."""
    from lab6.data import CourseData, load_image_folder
    from lab6.evaluator import round_trip

    data = CourseData(data_root)
    res = {}
    for split in data.splits():
        if not (data.root / f"{split}_gt").is_dir():  # no ground-truth renders (not a synthetic set)
            continue
        sets = data.label_sets(split)
        x = load_image_folder(data.root / f"{split}_gt", len(sets))
        res[split] = {"sharp": round(ev.accuracy(x, sets), 4), "round_trip_32": round(ev.accuracy(round_trip(x, 32), sets), 4)}
    return res


def all_pairs_set(args, scenes: int) -> Path:
    """The all-pairs evaluator training set of `scenes` scenes (rendered once, shared by the jobs)."""
    from lab6.synth import write_dataset
    scenes = max(4, round(scenes * args.ev_scenes_scale))
    root = Path(args.out) / f"evaluator-data-{scenes}"
    write_dataset(root, scenes=scenes, seed=args.eval_seed, workers=args.render_workers, progress=False,
                  all_pairs=True)  # resumable and idempotent: a second job finds it complete
    return root


def evaluator_job(args, out: Path) -> dict:
    """Train the course's ResNet-18 at full width on an all-pairs set and measure its ceiling on `--data`."""
    from lab6.evaluator import Evaluator
    from lab6.evaluator_train import EvaluatorTrainConfig, train_evaluator

    t0 = time.time()
    eval_data = all_pairs_set(args, args.eval_scenes)
    t_render = time.time() - t0
    cfg = EvaluatorTrainConfig(width=args.eval_width, epochs=args.eval_epochs, max_minutes=args.eval_minutes,
                               threads=args.threads)
    ckpt = train_evaluator(eval_data, out=out / "evaluator.pth", config=cfg, device=args.device, progress=False)
    t_train = time.time() - t0 - t_render
    ev = Evaluator(ckpt, device=args.device)
    return {"config": vars(cfg), "render_s": round(t_render, 1), "train_s": round(t_train, 1),
            "ceiling": ceiling(ev, Path(args.data)),
            "info": {k: v for k, v in ev.info.items() if isinstance(v, (int, float, str))}}


def evsweep_job(args, out: Path, over: dict, scenes: int, rates: dict[int, float]) -> dict:
    """One CPU evaluator recipe, trained for the CPU's steps in --ev-cpu-minutes (or its epochs), and its ceiling."""
    from lab6.data import CourseData
    from lab6.evaluator import Evaluator
    from lab6.evaluator_train import EvaluatorTrainConfig, train_evaluator

    eval_data = all_pairs_set(args, scenes)
    n = len(CourseData(eval_data).train)
    cfg = EvaluatorTrainConfig(**over)
    steps_per_epoch = max(1, (n - min(cfg.val_images, n // 5)) // cfg.batch_size)  # as train_evaluator counts
    cpu = cpu_steps(args.ev_cpu_minutes, rates[cfg.width], cfg.batch_size)
    cfg.epochs = max(1, min(cfg.epochs, round(cpu / steps_per_epoch)))  # what ends first on the CPU
    cfg.max_minutes, cfg.threads = 0, args.threads
    t0 = time.time()
    ckpt = train_evaluator(eval_data, out=out / "evaluator.pth", config=cfg, device=args.device, progress=False)
    ev = Evaluator(ckpt, device=args.device)
    info = {k: v for k, v in ev.info.items() if isinstance(v, (int, float, str))}
    return {"config": vars(cfg), "scenes": eval_data.name, "images": n, "cpu_steps": cpu,
            "cpu_minutes": round(info.get("steps", 0) * cfg.batch_size / rates[cfg.width] / 60, 2),
            "train_s": round(time.time() - t0, 1), "ceiling": ceiling(ev, Path(args.data)), "info": info}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def expand(jobs: str, args) -> list[str]:
    """Job groups to single jobs: `sweep` -> sweep:<recipe> for each recipe of --variants, and so on."""
    out = []
    for job in jobs.split(","):
        if job == "sweep":
            out += [f"sweep:{v}" for v in args.variants or [args.profile]]
        elif job == "evsweep":
            out += [f"evsweep:{v[0]}" for v in by_name(EV_VARIANTS, args.ev_variants)]
        elif job == "curve":
            out += [f"curve:{v}" for v in args.curve_variants or [args.profile]]
        else:
            out.append(job)
    return out


def orchestrate(args) -> int:
    """Start the jobs, stop what is left at --deadline, and summarise."""
    jobs = expand(args.jobs, args)
    cpu_rates(args, jobs)  # a missing CPU speed fails now, not inside a job
    if any(j.startswith("evsweep:") for j in jobs):
        ev_cpu_rates(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    argv = [a for a in sys.argv[1:]]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE")
    if "evaluator" in jobs:
        (out / "evaluator.started").touch()
    scenes = {args.eval_scenes} if "evaluator" in jobs else set()
    scenes |= {v[2] for v in EV_VARIANTS if f"evsweep:{v[0]}" in jobs}
    for n in sorted(scenes):  # once, before the jobs that share them start
        all_pairs_set(args, n)
    procs = {}
    t0 = time.time()
    for job in jobs:
        folder = job_folder(out, job)
        log = open(folder.with_name(folder.name + ".log"), "w")
        procs[job] = (subprocess.Popen([sys.executable, __file__, *argv, "--job", job], stdout=log,
                                       stderr=subprocess.STDOUT, env=env), log)
        print(f"[{time.time() - t0:5.0f} s] started {job}", flush=True)
    codes = {}
    while len(codes) < len(procs):
        for job, (p, log) in procs.items():
            if job not in codes and p.poll() is not None:
                codes[job] = p.returncode
                log.close()
                if job == "evaluator":  # the others stop waiting for it, success or not
                    (out / "evaluator.started").unlink(missing_ok=True)
                print(f"[{time.time() - t0:5.0f} s] {job} exited {codes[job]}", flush=True)
        if time.time() - t0 > args.deadline:
            for job, (p, _log) in procs.items():
                if job not in codes:
                    p.kill()
                    codes[job] = "killed at deadline"
                    print(f"[{time.time() - t0:5.0f} s] {job} killed at the deadline", flush=True)
        time.sleep(1)
    results = {"machine": machine(args.device), "args": vars(args), "exit_codes": codes,
               "wall_s": round(time.time() - t0, 1)}
    for job in procs:
        folder = job_folder(out, job)
        path = folder / "result.json"
        results[job] = json.loads(path.read_text()) if path.exists() else None
        if job.startswith("curve:"):  # killed or not, its validation records are on disk
            metrics = next(folder.glob("*/metrics.jsonl"), None)
            if metrics:
                results[job] = results[job] or {"job": job}
                results[job].setdefault("train", {})
                results[job]["train"].update(train_summary(metrics.parent, job.partition(":")[2], 0)
                                             if not results[job]["train"].get("validation") else {})
    _write(out / "results.json", results)
    text = summary(results)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    return 0 if all(c == 0 for c in codes.values()) else 1


def machine(device: str) -> dict:
    """Where this ran: host, CPU count, torch version and the GPU's name."""
    import torch
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summary(results: dict) -> str:
    """A plain-text table of every job's speed and accuracy."""
    lines = [f"machine: {results['machine']}", f"exit codes: {results['exit_codes']}"]
    e = results.get("evaluator")
    if e:
        lines.append(f"evaluator (full width): rendered in {e['render_s']} s, trained in {e['train_s']} s; ceiling " +
                     "  ".join(f"{s} {c['sharp']:.3f}/{c['round_trip_32']:.3f}" for s, c in e["ceiling"].items()) +
                     f" (sharp/64-32-64); held-out {e['info'].get('held_out_accuracy')}")
    for job, r in results.items():
        if not job.startswith("evsweep:") or not r:
            continue
        c = r["ceiling"]
        lines.append(f"{job:28s} {r['info'].get('steps')} steps = {r['cpu_minutes']} CPU-min "
                     f"({r['config']['epochs']} ep, {r['images']} img): " +
                     "  ".join(f"{s} {v['sharp']:.3f}/{v['round_trip_32']:.3f}" for s, v in c.items()) +
                     f"  held-out {r['info'].get('held_out_accuracy')}")
    for job in ("full", "quick"):
        r = results.get(job)
        if not r or "eval" not in r:
            continue
        tr, acc = r["train"], r["eval"]["accuracy"]
        lines.append(f"{job} ({tr['profile']}): {tr['steps']} steps in {tr['wall_s']} s, img/s first window "
                     f"{tr['img_per_s_first']}, median {tr['img_per_s_median']}, GPU memory {tr['gpu_mem_gb']} GB")
        for split, by_w in acc.items():
            lines.append(f"  {split:12s} " + "  ".join(f"w={w}: {a:.3f}" for w, a in by_w.items()))
    for job, r in results.items():
        if not job.startswith("sweep:") or not r:
            continue
        if "eval" not in r:
            lines.append(f"{job}: no evaluation ({r.get('train', {}).get('steps')} steps trained)")
            continue
        acc = r["eval"]["accuracy"]
        best = {split: max(by_w.values()) for split, by_w in acc.items()}
        mean = sum(best.values()) / len(best)
        lines.append(f"{job:28s} {r['train']['steps']} steps (batch {r['batch_size']}): best over scales " +
                     "  ".join(f"{s} {a:.3f}" for s, a in best.items()) + f"  mean {mean:.3f}"
                     f"   by w {'/'.join(acc)}: " + " ".join(
                         f"{w}:" + "/".join(f"{acc[split][w]:.2f}" for split in acc) for w in next(iter(acc.values()))))
    for job, r in results.items():
        if not job.startswith("curve:") or not r:
            continue
        every = r.get("every_steps")
        lines.append(f"{job} (guidance {r.get('guidance')}; one check every {every} steps = "
                     f"{r.get('every_cpu_minutes')} CPU-min):")
        for v in r.get("train", {}).get("validation", []):
            cpu_min = v["step"] / every * r["every_cpu_minutes"] if every else float("nan")
            lines.append(f"  step {v['step']:6d} ~{cpu_min:5.0f} CPU-min  " +
                         "  ".join(f"{k[:-4]} {a:.3f}" for k, a in v.items() if k.endswith("_acc")))
    s = results.get("sampling")
    if s and s.get("report"):
        lines.append("sampling:\n" + s["report"])
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synth")
    p.add_argument("--evaluator", default=None,
                   help="scores samples if `evaluator` is not run (default <data>/evaluator.pth)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per job")
    p.add_argument("--jobs", default="evaluator,full,quick,sampling",
                   help="comma list of evaluator, evsweep, sweep, curve, sampling, full, quick "
                        "(default evaluator,full,quick,sampling: the jobs that need no CPU speeds)")
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=480, help="seconds after which unfinished jobs are stopped")
    p.add_argument("--render-workers", type=int, default=0, help="processes for the all-pairs renders (0: all)")
    p.add_argument("--eval-scenes", type=int, default=6000)
    p.add_argument("--eval-seed", type=int, default=1)
    p.add_argument("--eval-width", type=int, default=64)
    p.add_argument("--eval-epochs", type=int, default=20)
    p.add_argument("--eval-minutes", type=float, default=2.5)
    p.add_argument("--ev-variants", default=None, help="comma list of EV_VARIANTS names (default all)")
    p.add_argument("--ev-scenes-scale", type=float, default=1.0, help="scales every all-pairs set (CPU checks)")
    p.add_argument("--ev-cpu-minutes", type=float, default=9.0, help="the CPU evaluator's training budget")
    p.add_argument("--ev-cpu-img-per-s", default=None, metavar="WIDTH=RATE,...",
                   help="`evsweep`: training images per second of the CPU evaluator at each width on the CPU the "
                        "budget stands for, e.g. 16=900,32=450 (required for evsweep)")
    p.add_argument("--profile", default="quick",
                   help="the recipe of `sweep` and `curve` when no --variants / --curve-variants are given, and of "
                        "`quick` unless --quick-profile")
    p.add_argument("--variants", type=C.name_list, default=None,
                   help="comma list of recipes for `sweep`, PROFILE+setting=value+... as bench_quality's --profiles "
                        "(default --profile)")
    p.add_argument("--cpu-minutes", type=float, default=20.0, help="CPU minutes each sweep recipe gets")
    p.add_argument("--cpu-img-per-s", default=None, metavar="RATE|RECIPE=RATE,...",
                   help="`sweep` and `curve`: training images per second of each recipe on the CPU whose minutes "
                        "the step budgets stand for, one figure for all or one per recipe (required for them)")
    p.add_argument("--sweep-seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1])
    p.add_argument("--curve-variants", type=C.name_list, default=None,
                   help="comma list of recipes for `curve` (default --profile)")
    p.add_argument("--curve-minutes", type=float, default=90.0, help="CPU minutes of the curve runs")
    p.add_argument("--curve-every", type=float, default=10.0, help="CPU minutes between the curve's checks")
    p.add_argument("--curve-guidance", type=float, default=2.0)
    p.add_argument("--model", default=None, help="model of `sampling` (default pretrained/quick)")
    p.add_argument("--sampling-seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2])
    p.add_argument("--full-profile", default="full")
    p.add_argument("--full-steps", type=int, default=3000)
    p.add_argument("--full-minutes", type=float, default=4.0)
    p.add_argument("--full-seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0],
                   help="sampling seeds of the `full` job's DPM-Solver++ 25-step scores")
    p.add_argument("--quick-profile", default=None,
                   help="recipe of the `quick` job, PROFILE+section.setting=value+... as bench_quality's --profiles "
                        "(default --profile)")
    p.add_argument("--quick-steps", type=int, default=4000)
    p.add_argument("--quick-minutes", type=float, default=3.5)
    args = p.parse_args(argv)
    args.evaluator = args.evaluator or str(Path(args.data) / "evaluator.pth")
    if args.job:
        run_job(args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
