"""Screen training recipes at equal CPU minutes: narrow nets from random weights, 3 training seeds each.

    .venv/bin/python benchmarks/bench_screen.py --recipes benchmarks/recipes/screen/uniform.yaml,... \
        [--seeds 0,1,2] [--minutes 5] [--sample-seeds 0] [--data data/synth] [--runs outputs/screen] [--out DIR]

A full training of the quick model costs hours of a CPU; a screen costs minutes per run. Each recipe is a YAML
file over the `quick` profile (usually a narrower net, `train.max_minutes: null`). First every recipe's training
speed is measured here, alone and back to back (`lab6.train.measure_speed`: 12 optimiser steps of its own batch
after 3 warm-up steps), and `--minutes` becomes a step count per recipe: equal CPU minutes at this machine's speed,
whatever else runs later (a shared CPU lengthens the wall time, not the budget). Then `lab6 train` runs each recipe for each
seed into `--runs`/<recipe>-seed<k> (a run whose export already has its step count is kept, so a screen stopped
by the end of a session goes on where it was), and `bench_fidelity.py` reads every export on test, new_test
and unseen_test once per `--sample-seeds`. The table gives, per recipe, the mean and spread (min-max over the
training seeds) of exact scenes, duplicates, missing objects and top-k; results.json keeps every run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fidelity  # noqa: E402
from _common import REPO, default_out, format_table, int_list, load_average, machine_info, machine_line, run_main  # noqa: E402

from lab6.config import load_config  # noqa: E402
from lab6.train import measure_speed  # noqa: E402

METRICS = ["exact", "duplicate", "missing", "top-k"]
SPLITS = ["test", "new_test", "unseen_test"]


def calibrate(recipe: Path, profile: str) -> float:
    """Training images per second of a recipe's model, loss and batch on this machine (lab6.train.measure_speed)."""
    return measure_speed(load_config(profile, recipe), steps=12, warmup=3)


def finished_steps(run: Path) -> int | None:
    """The step count of a run's export (pipeline/stages.json), or None when it has none."""
    stages = run / "pipeline" / "stages.json"
    if not stages.exists():
        return None
    try:
        return int(json.loads(stages.read_text())[-1]["steps"])
    except (KeyError, IndexError, TypeError, ValueError, json.JSONDecodeError):
        return None


def train_run(recipe: Path, profile: str, seed: int, steps: int, data: str, run: Path) -> dict:
    """`lab6 train` of one recipe and seed for `steps` steps; {'run', 'seconds', 'img_per_s'}."""
    done = finished_steps(run)
    if done == steps:
        print(f"kept {run} ({steps} steps)", flush=True)
        return {"run": str(run), "seconds": None, "img_per_s": None}
    cmd = [sys.executable, "-m", "lab6", "train", "--profile", profile, "--config", str(recipe), "--seed", str(seed),
           "--max-steps", str(steps), "--checkpoint-every", str(steps), "--data", data, "--out", str(run),
           "--no-progress"]
    if any(run.glob("checkpoint-*")):
        cmd += ["--resume", "latest"]
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    log = run.with_name(run.name + ".log")
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as f:
        subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - start
    rates = [json.loads(line).get("img_per_s") for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in rates if r]
    return {"run": str(run), "seconds": round(seconds, 1),
            "img_per_s": round(statistics.median(rates), 1) if rates else None}


def summary(values: list[float]) -> str:
    """'0.412 (0.38-0.45)' for several values, '0.412' for one."""
    mean = sum(values) / len(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", required=True, help="comma-separated recipe YAML files")
    parser.add_argument("--profile", default="quick", help="profile the recipes override (default quick)")
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="training seeds (default 0,1,2)")
    parser.add_argument("--minutes", type=float, default=5.0, help="CPU minutes per run at this machine's speed")
    parser.add_argument("--sample-seeds", default="0", help="sampling seeds of the reading, e.g. 0-1 (96 images each)")
    parser.add_argument("--data", default="data/synth", help="dataset root (training images and test files)")
    parser.add_argument("--runs", default="outputs/screen", help="folder of the training runs (kept for re-runs)")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results/screen-<date>)")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: read the runs already finished (a screen stopped part way)")
    args = parser.parse_args(argv)
    recipes = [Path(r) for r in args.recipes.split(",") if r.strip()]
    for r in recipes:
        if not r.exists():
            raise SystemExit(f"error: --recipes: {r} not found")
        load_config(args.profile, r)  # a bad recipe stops the screen before any training
    if args.minutes <= 0:
        raise SystemExit(f"error: --minutes: expected a positive number, got {args.minutes}")
    out = Path(args.out) if args.out else default_out("screen")
    out.mkdir(parents=True, exist_ok=True)
    load = {"start": load_average()}

    # Equal CPU minutes: each recipe's speed measured alone, back to back, kept for a screen that goes on later
    cal_path = out / "calibration.json"
    cal = json.loads(cal_path.read_text()) if cal_path.exists() else {}
    for r in recipes:
        if r.stem not in cal:
            ips = calibrate(r, args.profile)
            batch = load_config(args.profile, r).train.batch_size
            cal[r.stem] = {"img_per_s": round(ips, 1), "batch_size": batch,
                           "steps": max(1, round(args.minutes * 60 * ips / batch)), "minutes": args.minutes}
            print(f"{r.stem}: {ips:.1f} img/s -> {cal[r.stem]['steps']} steps of {batch} in {args.minutes:g} min",
                  flush=True)
            cal_path.write_text(json.dumps(cal, indent=1))

    # Train seed by seed, so that a stopped screen has every recipe at the first seeds
    runs = []
    for seed in args.seeds:
        for r in recipes:
            run = Path(args.runs) / f"{r.stem}-seed{seed}"
            if args.no_train:
                if finished_steps(run) == cal[r.stem]["steps"]:
                    runs.append({"recipe": r.stem, "seed": seed, "steps": cal[r.stem]["steps"], "run": str(run)})
                continue
            runs.append({"recipe": r.stem, "seed": seed, "steps": cal[r.stem]["steps"],
                         **train_run(r, args.profile, seed, cal[r.stem]["steps"], args.data, run)})
            (out / "runs.json").write_text(json.dumps(runs, indent=1))

    # One reading of every export with the shipped judges
    fid_out = out / "fidelity"
    bench_fidelity.main(["--models", ",".join(str(Path(x["run"]) / "pipeline") for x in runs),
                         "--seeds", args.sample_seeds, "--data", args.data, "--out", str(fid_out)])
    readings = {Path(x["model"]).parent.name: x["per_split"]
                for x in json.loads((fid_out / "results.json").read_text())["runs"] if x["model"] != "ground truth"}
    header = ["recipe", "img/s", "steps", *[f"{m} {s}" for s in ("new_test",) for m in METRICS],
              *[f"exact {s}" for s in ("test", "unseen_test")], "top-k test / unseen"]
    rows, table = [], {}
    for r in recipes:
        mine = [readings[Path(x["run"]).name] for x in runs if x["recipe"] == r.stem]
        if not mine:
            continue
        table[r.stem] = {s: {m: [p[s][m] for p in mine] for m in METRICS} for s in SPLITS}
        rows.append([r.stem, cal[r.stem]["img_per_s"], cal[r.stem]["steps"],
                     *[summary(table[r.stem]["new_test"][m]) for m in METRICS],
                     *[summary(table[r.stem][s]["exact"]) for s in ("test", "unseen_test")],
                     f"{summary(table[r.stem]['test']['top-k'])} / {summary(table[r.stem]['unseen_test']['top-k'])}"])
    load["end"] = load_average()
    results = {"machine": machine_info(), "load_average": load, "minutes": args.minutes, "seeds": args.seeds,
               "sample_seeds": args.sample_seeds, "calibration": cal, "runs": runs, "per_recipe": table}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("\n" + machine_line(results["machine"], load["end"]))
    print(f"{args.minutes:g} CPU minutes per run, training seeds {args.seeds}, mean (min-max over seeds):")
    print(format_table(header, rows))
    (out / "screen.md").write_text(format_table(header, rows) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
