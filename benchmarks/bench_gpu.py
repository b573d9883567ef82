"""One prepared GPU session: a full-width evaluator, the `full` profile's speed and accuracy, a longer
`quick` run to ship, and a sweep of `quick` recipes at step budgets equal to what this project's 2-core
CPU does in 20 minutes.

    python benchmarks/bench_gpu.py --data data/synth --out OUT --device cuda

Four jobs run as separate processes on the one GPU. `evaluator` renders an all-pairs training set and
trains the course's ResNet-18 at full width, then measures its ceiling on the ground-truth renders;
`full` starts `--stagger-full` s later and runs alone for `--stagger` s (its first log windows give a
clean img/s figure) before `quick` and `sweep` join. Jobs score with the new evaluator once it exists
(else `--evaluator`). Each job writes OUT/<job>/result.json; the orchestrator prints one table and writes
OUT/results.json. Every job also runs on the CPU with small settings (`--full-profile tiny ...`), which is
how this script is tested.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCALES = (1.0, 2.0, 3.0, 4.0, 5.0)
# Quick-recipe variants for the sweep: (name, overrides, cpu_img_per_s_ratio). None of these changes the
# network's size or input, so each trains at quick's CPU speed and gets the same steps (ratio 1).
VARIANTS = (
    ("quick", {}, 1.0),
    ("zero-snr", {"schedule": {"zero_terminal_snr": True}}, 1.0),
    ("min-snr-5", {"train": {"min_snr_gamma": 5.0}}, 1.0),
    ("lr-1e-3", {"train": {"lr": 1e-3}}, 1.0),
    ("lr-4e-3", {"train": {"lr": 4e-3}}, 1.0),
    ("scale-shift", {"model": {"resnet_time_scale_shift": "scale_shift"}}, 1.0),
    ("eps-pred", {"schedule": {"prediction_type": "epsilon"}}, 1.0),
)


def evaluator_for(out: Path, fallback: str, wait_s: float = 600) -> Path:
    """The evaluator trained by the `evaluator` job once it has finished (waiting for it), else `fallback`."""
    done = out / "evaluator" / "result.json"
    t0 = time.time()
    while (out / "evaluator.started").exists() and not done.exists() and time.time() - t0 < wait_s:
        time.sleep(5)
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
              max_minutes: float | None, threads: int) -> tuple[Path, dict]:
    """Train one configuration with lab6.train.train; returns the run folder and a speed summary."""
    import torch

    from lab6.config import load_config
    from lab6.plots import read_metrics
    from lab6.train import train

    torch.set_num_threads(threads)
    train_over = {"output_dir": str(out / name), "data_root": str(data), "device": device, "max_steps": max_steps,
                  "max_minutes": max_minutes, "num_threads": threads,
                  "lr_warmup_steps": min(500, max(2, max_steps // 10)),
                  "checkpoint_every": max(10, max_steps // 4), "validate_every": max(10, max_steps // 8)}
    over = {k: dict(v) for k, v in overrides.items()}
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
    recs = read_metrics(run / "metrics.jsonl")
    speeds = [r["img_per_s"] for r in recs if "img_per_s" in r]
    return run, {"profile": profile, "steps": max(r["step"] for r in recs), "wall_s": round(time.time() - t0, 1),
                 "img_per_s_first": speeds[1] if len(speeds) > 1 else (speeds[0] if speeds else None),
                 "img_per_s_median": sorted(speeds)[len(speeds) // 2] if speeds else None,
                 "gpu_mem_gb": max((r.get("gpu_mem_gb", 0) for r in recs), default=0),
                 "validation": [{k: v for k, v in r.items() if k == "step" or k.endswith("_acc")}
                                for r in recs if any(k.endswith("_acc") for k in r)]}


def run_job(args) -> None:
    """One job in this process: train, evaluate, write <out>/<job>/result.json."""
    out = Path(args.out)
    data, dev = Path(args.data), args.device
    result: dict = {"job": args.job}
    if args.job == "evaluator":
        result.update(evaluator_job(args, out / "evaluator"))
        _write(out / args.job / "result.json", result)
        return
    ev = None
    if args.job == "full":
        run, result["train"] = train_job("full", args.full_profile, {}, out, data, dev, args.full_steps,
                                         args.full_minutes, args.threads)
        ev = evaluator_for(out, args.evaluator)
        result["eval"] = evaluate(run / "pipeline", data, ev, dev, (1.0, 2.0, 4.0), steps=25, seeds=(0,))
    elif args.job == "quick":
        run, result["train"] = train_job("quick", args.quick_profile, {}, out, data, dev, args.quick_steps,
                                         args.quick_minutes, args.threads)
        ev = evaluator_for(out, args.evaluator)
        result["eval"] = evaluate(run / "pipeline", data, ev, dev, SCALES, steps=25, seeds=(0, 1, 2), samplers=True)
    else:
        result["variants"] = {}
        for name, over, ratio in VARIANTS[: args.variants]:
            steps = max(2, round(args.sweep_steps * ratio))
            try:
                run, tr = train_job(f"sweep-{name}", args.sweep_profile, over, out, data, dev, steps, None,
                                    args.threads)
                ev = ev or evaluator_for(out, args.evaluator)
                result["variants"][name] = {"train": tr, "eval": evaluate(run / "pipeline", data, ev, dev, SCALES)}
            except Exception as e:  # one broken variant must not lose the others
                result["variants"][name] = {"error": f"{type(e).__name__}: {e}"}
            _write(out / "sweep" / "result.json", result)
    _write(out / args.job / "result.json", result)


def evaluator_job(args, out: Path) -> dict:
    """Render an all-pairs training set, train the evaluator on it, and measure its ceiling on `--data`."""
    import torch

    from lab6.data import CourseData, load_image_folder
    from lab6.evaluator import Evaluator, EvaluatorTrainConfig, round_trip, train_evaluator
    from lab6.synth import write_dataset

    t0 = time.time()
    eval_data = out / "data"
    write_dataset(eval_data, scenes=args.eval_scenes, seed=args.eval_seed, workers=0, progress=False,
                  all_pairs=True)
    t_render = time.time() - t0
    cfg = EvaluatorTrainConfig(width=args.eval_width, epochs=args.eval_epochs, max_minutes=args.eval_minutes,
                               threads=args.threads)
    ckpt = train_evaluator(eval_data, out=out / "evaluator.pth", config=cfg, device=args.device, progress=False)
    t_train = time.time() - t0 - t_render
    ev = Evaluator(ckpt, device=args.device)
    data = CourseData(args.data)
    ceiling = {}
    for split in data.splits():
        sets = data.label_sets(split)
        x = load_image_folder(data.root / f"{split}_gt", len(sets))
        ceiling[split] = {"sharp": round(ev.accuracy(x, sets), 4),
                          "round_trip_32": round(ev.accuracy(round_trip(x, 32), sets), 4)}
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"config": vars(cfg), "render_s": round(t_render, 1), "train_s": round(t_train, 1),
            "ceiling": ceiling, "info": {k: v for k, v in ev.info.items() if isinstance(v, (int, float, str))}}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def orchestrate(args) -> int:
    """Start the jobs (full first, the others after --stagger s), wait, and summarise."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [sys.executable, __file__, "--data", args.data, "--evaluator", args.evaluator, "--out", args.out,
              "--device", args.device, "--threads", str(args.threads),
              "--full-profile", args.full_profile, "--full-steps", str(args.full_steps),
              "--full-minutes", str(args.full_minutes), "--quick-profile", args.quick_profile,
              "--quick-steps", str(args.quick_steps), "--quick-minutes", str(args.quick_minutes),
              "--sweep-profile", args.sweep_profile, "--sweep-steps", str(args.sweep_steps),
              "--variants", str(args.variants), "--eval-scenes", str(args.eval_scenes),
              "--eval-seed", str(args.eval_seed), "--eval-width", str(args.eval_width),
              "--eval-epochs", str(args.eval_epochs), "--eval-minutes", str(args.eval_minutes)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE")
    procs = {}
    t0 = time.time()
    jobs = args.jobs.split(",")
    if "evaluator" in jobs:
        (out / "evaluator.started").touch()
    for job in jobs:
        if job == "full" and "evaluator" in procs:
            time.sleep(args.stagger_full)
        elif job in ("quick", "sweep") and "full" in procs and not any(j in procs for j in ("quick", "sweep")):
            time.sleep(args.stagger)
        log = open(out / f"{job}.log", "w")
        procs[job] = (subprocess.Popen(common + ["--job", job], stdout=log, stderr=subprocess.STDOUT, env=env), log)
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
        time.sleep(1)
    results = {"machine": machine(args.device), "args": vars(args), "exit_codes": codes}
    for job in procs:
        path = out / job / "result.json"
        results[job] = json.loads(path.read_text()) if path.exists() else None
    _write(out / "results.json", results)
    print(summary(results))
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
    lines = [f"machine: {results['machine']}"]
    e = results.get("evaluator")
    if e:
        lines.append(f"evaluator: rendered in {e['render_s']} s, trained in {e['train_s']} s; ceiling " +
                     "  ".join(f"{s} {c['sharp']:.3f}/{c['round_trip_32']:.3f}" for s, c in e["ceiling"].items()) +
                     " (sharp/64-32-64)")
    for job in ("full", "quick"):
        r = results.get(job)
        if not r:
            continue
        tr, acc = r["train"], r["eval"]["accuracy"]
        lines.append(f"{job} ({tr['profile']}): {tr['steps']} steps in {tr['wall_s']} s, img/s first window "
                     f"{tr['img_per_s_first']}, median {tr['img_per_s_median']}, GPU memory {tr['gpu_mem_gb']} GB")
        for split, by_w in acc.items():
            lines.append(f"  {split:12s} " + "  ".join(f"w={w}: {a:.3f}" for w, a in by_w.items()))
        if "samplers_at_best_scale" in r["eval"]:
            s = r["eval"]["samplers_at_best_scale"]
            lines.append(f"  samplers at w={s['guidance']}: " + "  ".join(
                f"{k}: {v['accuracy']:.3f} ({v['seconds']} s)" for k, v in s.items() if isinstance(v, dict)))
    sweep = results.get("sweep") or {}
    for name, v in sweep.get("variants", {}).items():
        if "error" in v:
            lines.append(f"sweep {name}: {v['error']}")
            continue
        acc = v["eval"]["accuracy"]
        best = {split: max(by_w.values()) for split, by_w in acc.items()}
        lines.append(f"sweep {name:12s} {v['train']['steps']} steps: best over scales " +
                     "  ".join(f"{s} {a:.3f}" for s, a in best.items()) +
                     "   test by w: " + " ".join(f"{w}:{a:.2f}" for w, a in acc["test"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synth")
    p.add_argument("--evaluator", default="data/synth/evaluator.pth")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=4, help="torch CPU threads per job")
    p.add_argument("--jobs", default="evaluator,full,quick,sweep")
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)
    p.add_argument("--stagger-full", type=float, default=70, help="seconds after `evaluator` that `full` starts")
    p.add_argument("--stagger", type=float, default=45, help="seconds `full` runs alone before the others start")
    p.add_argument("--eval-scenes", type=int, default=6000)
    p.add_argument("--eval-seed", type=int, default=1)
    p.add_argument("--eval-width", type=int, default=64)
    p.add_argument("--eval-epochs", type=int, default=20)
    p.add_argument("--eval-minutes", type=float, default=2.5)
    p.add_argument("--full-profile", default="full")
    p.add_argument("--full-steps", type=int, default=3000)
    p.add_argument("--full-minutes", type=float, default=4.0)
    p.add_argument("--quick-profile", default="quick")
    p.add_argument("--quick-steps", type=int, default=4000)
    p.add_argument("--quick-minutes", type=float, default=3.5)
    p.add_argument("--sweep-profile", default="quick")
    p.add_argument("--sweep-steps", type=int, default=800, help="steps of `quick` the 2-core CPU does in 20 min")
    p.add_argument("--variants", type=int, default=5)
    args = p.parse_args(argv)
    if args.job:
        run_job(args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
