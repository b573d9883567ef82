"""Quality per training minute: evaluator accuracy of each profile after cumulative wall-clock training budgets.

    .venv/bin/python benchmarks/bench_quality.py [--profiles quick,seed] [--budgets 5,10,20] [--scales 1,2,3,5]
        [--data data/synth] [--seeds 0] [--num-sets N] [--out DIR] [--device cpu]

One training run per profile, paused at each budget: train until the budget (minutes of training steps only),
write a checkpoint and the EMA export, sample `test`, `new_test` and `unseen_test` with DPM-Solver++ (20 steps)
at every guidance scale, score with the evaluator, then resume the same run (model, optimizer, LR scheduler, EMA
and RNG states restored) up to the next budget. Loading, checkpointing, export and evaluation do not count
against the budget, and the learning-rate schedule is that of one uninterrupted run of the largest budget: it
follows the step count (the profile's LR schedule over its max_steps, or --max-steps; quick: constant after
warm-up), so a budget that ends before max_steps is evaluated mid-schedule, and training stops early at
max_steps. At the final budget each profile is also sampled with its own default sampler, steps and guidance
(e.g. the seed recipe's DDPM-1000) when the estimated time fits --native-max-minutes.

Writes to --out (default benchmarks/results/quality-<date>/): report.txt (the printed tables and notes),
quality.csv (one row per profile, budget, split, sampler, guidance and seed), quality_table.csv (the printed
table), quality.png (accuracy vs minutes, one panel per split, one line per profile and scale), quality.json
(machine, load averages, settings, notes, rows) and grids/ (sample grids of the first seed). Training runs go
to --runs (default outputs/bench/<out name>/).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads stall a shared CPU

import argparse  # noqa: E402
import hashlib  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from lab6.data import TEST_SPLITS  # noqa: E402

SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpm": "DPM++", "dpm-sde": "SDE-DPM++"}  # as in lab6.compare
EVAL_SAMPLER, EVAL_STEPS = "dpm", 20
BUDGET_KEYS = ("profile", "budget_min", "train_min", "steps", "max_steps", "lr", "img_per_s", "load_avg_1m")
CSV_HEADER = ["profile", "budget_min", "train_min", "steps", "max_steps", "lr", "train_img_per_s", "load_avg_1m",
              "split", "sampler", "num_steps", "guidance", "seed", "accuracy", "hits", "labels", "sample_seconds",
              "reused", "unrequested"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Example (a one-minute check): --profiles tiny --budgets 0.2,0.4 --scales 1,2")
    p.add_argument("--profiles", type=C.name_list, default=["quick", "seed"],
                   help="comma-separated profiles, each trained once (default quick,seed); a variant adds settings "
                        "to a profile, e.g. quick+timestep_sampling=importance+train.seed=1")
    p.add_argument("--budgets", type=C.float_list, default=[5.0, 10.0, 20.0],
                   help="cumulative training minutes at which to evaluate, increasing (default 5,10,20)")
    p.add_argument("--scales", type=C.float_list, default=[1.0, 2.0, 3.0, 5.0],
                   help="classifier-free guidance scales for DPM-Solver++ 20 steps (default 1,2,3,5; 1 = none)")
    p.add_argument("--splits", type=C.name_list, default=list(TEST_SPLITS),
                   help="test files to sample (default test,new_test,unseen_test; missing ones are skipped)")
    p.add_argument("--seeds", type=C.int_list, default=[0],
                   help="sampling seeds, averaged (default 0; 32 label sets vary by about +-0.04 between seeds)")
    p.add_argument("--num-sets", default=None, metavar="N|PROFILE=N,...",
                   help="sample only the first N label sets of each split, for every profile or e.g. seed=8 "
                        "(default all 32; the seed UNet samples slowly on a CPU)")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset root with train.json, test files and the evaluator (default data/synth)")
    p.add_argument("--evaluator", default=None, help="evaluator checkpoint (default <data>/checkpoint.pth or "
                                                      "evaluator.pth)")
    p.add_argument("--max-steps", default=None, metavar="N|PROFILE=N,...",
                   help="override max_steps, which fixes the LR schedule (cosine, warmup-stable-decay) and stops "
                        "training: one number for every profile or e.g. quick=2000,seed=30000 (default: each "
                        "profile's own)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for training and sampling (default: each profile's num_threads, else "
                        "torch's default)")
    p.add_argument("--native", choices=("final", "none"), default="final",
                   help="also sample with each profile's own default sampler/steps/guidance at the final budget "
                        "(default final)")
    p.add_argument("--native-max-minutes", type=float, default=60.0,
                   help="skip that when its estimated time (from the DPM++ timings) exceeds this (default 60)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default benchmarks/results/quality-<date>/)")
    p.add_argument("--runs", type=Path, default=None,
                   help="folder for the training runs, one sub-folder per profile; must not hold earlier runs "
                        "(default outputs/bench/<out name>/)")
    p.add_argument("--delete-runs", action="store_true", help="delete the training runs at the end")
    return p


def per_profile(option: str, text: str | None, profiles: list[str], cast=int) -> dict:
    """'600' or 'quick=600,seed=30000' -> {profile: cast(value) or None (= not given)}; values must be > 0."""
    from lab6.errors import ConfigError
    out: dict = {p: None for p in profiles}
    if not text:
        return out
    try:
        if "=" not in text:
            out = {p: cast(text) for p in profiles}
        else:
            for part in C.name_list(text):
                name, value = part.rsplit("=", 1)  # a variant's name holds '=' too
                if name not in out:
                    raise ConfigError(f"{option}: {name!r} is not one of {','.join(profiles)}")
                out[name] = cast(value)
    except ValueError:
        raise ConfigError(f"{option}: expected N or PROFILE=N,..., got {text!r}") from None
    if any(v is not None and v <= 0 for v in out.values()):
        raise ConfigError(f"{option}: must be > 0, got {text!r}")
    return out


def profile_spec(spec: str) -> tuple[str, dict]:
    """'quick+key=value+...' -> ('quick', {key: value}); values are read as YAML scalars (0.003, true, importance)."""
    import yaml

    from lab6.errors import ConfigError
    base, *parts = spec.split("+")
    overrides = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ConfigError(f"--profiles: {spec!r}: expected PROFILE+setting=value+..., got {part!r}")
        overrides[key] = yaml.safe_load(value)
    return base, overrides


def profile_overrides(spec: str) -> tuple[str, dict]:
    """'quick+train.seed=1+lr=0.003' -> ('quick', {'train': {'seed': 1}, 'lr': 0.003}): load_config's overrides."""
    from lab6.config import SECTIONS
    from lab6.errors import ConfigError
    base, flat = profile_spec(spec)
    overrides: dict = {}
    for key, value in flat.items():
        section, dot, name = key.partition(".")  # 'train.seed': a setting whose name is in two sections
        if dot:
            overrides.setdefault(section, {})[name] = value
        elif key in SECTIONS:
            raise ConfigError(f"--profiles: {spec!r}: name single settings (e.g. +lr=0.003), not a section")
        else:
            overrides[key] = value
    return base, overrides


def file_stem(profile: str, limit: int = 80) -> str:
    """A file-name-safe stem for a profile variant: long ones are cut and keep a hash, so names stay unique."""
    if len(profile) <= limit:
        return profile
    return f"{profile[:limit - 9]}-{hashlib.sha1(profile.encode()).hexdigest()[:8]}"


def setting_name(sampler: str, steps: int) -> str:
    return f"{SAMPLER_NAMES.get(sampler, sampler)}-{steps}"


def train_config(profile: str, run_dir: Path, args, minutes: float, max_steps: int | None):
    """The profile's recipe with a time budget, no in-loop checkpoints or validation (they would eat the budget)."""
    from lab6.config import load_config
    train = {"output_dir": str(run_dir), "data_root": str(args.data), "max_minutes": minutes,
             "checkpoint_every": 10**9, "validate_every": 0, "validate_num": 0, "log_every": 1,
             "checkpoints_total_limit": 1}
    if max_steps is not None:
        train["max_steps"] = max_steps
    if args.threads is not None:
        train["num_threads"] = args.threads
    if args.device is not None:
        train["device"] = args.device
    base, overrides = profile_overrides(profile)
    train = {**overrides.pop("train", {}), **train}
    return load_config(base, train=train, **overrides)


def train_segment(profile: str, run_dir: Path, args, seconds: float, max_steps: int | None, resume: bool) -> dict:
    """Train for `seconds` of training steps from the run's latest checkpoint; figures of the segment."""
    from lab6.train import train
    cfg = train_config(profile, run_dir, args, seconds / 60, max_steps)
    records: list[dict] = []
    t0 = time.perf_counter()
    train(cfg, resume="latest" if resume else None, progress=False, callback=records.append)
    wall = time.perf_counter() - t0
    steps = [r for r in records if "loss" in r]
    return {"train_s": steps[-1]["elapsed_s"] if steps else 0.0, "steps": len(steps),
            "last_step": steps[-1]["step"] if steps else None, "lr": steps[-1]["lr"] if steps else None,
            "loss": steps[-1]["loss"] if steps else None, "wall_s": wall, "batch_size": cfg.train.batch_size,
            "max_steps": cfg.train.max_steps, "config": cfg}


def sample_rows(pipe, ev, sets_by_split: dict, sampler: str, steps: int, scales, seeds, grid_dir: Path | None,
                tag: str) -> list[dict]:
    """Sample every split at every scale and seed; one row each with accuracy, seconds and network evaluations."""
    from lab6.io import save_image
    from lab6.plots import make_grid
    from lab6.sample import sample
    rows = []
    for split, sets in sets_by_split.items():
        for w in scales:
            for seed in seeds:
                t0 = time.perf_counter()
                out = sample(pipe, sets, sampler=sampler, num_steps=steps, guidance_scale=w, seed=seed)
                seconds = time.perf_counter() - t0
                sc = ev.scores(out.images, sets)
                hits, total = sc["hits"], sc["labels"]
                print(f"    {split} {setting_name(sampler, steps)} w={w:g} seed {seed}: {hits / total:.3f} "
                      f"({hits}/{total}) in {seconds:.1f} s", flush=True)
                rows.append({"split": split, "sampler": setting_name(sampler, steps), "num_steps": steps,
                             "guidance": float(w), "seed": seed, "accuracy": hits / total, "hits": hits,
                             "labels": total, "sample_seconds": round(seconds, 2),
                             "evals": len(sets) * steps * (1 if w == 1 else 2),
                             "unrequested": round(sc["unrequested"], 4)})
                if grid_dir is not None and seed == seeds[0]:
                    save_image(grid_dir / f"{tag}-{split}-{setting_name(sampler, steps)}-w{w:g}.png",
                               make_grid(out.images, nrow=8))
    return rows


def mean_acc(rows: list[dict], split: str, guidance: float, sampler: str) -> float | None:
    accs = [r["accuracy"] for r in rows if r["split"] == split and r["guidance"] == guidance
            and r["sampler"] == sampler]
    return sum(accs) / len(accs) if accs else None


def plot(path: Path, budgets_rows: list[dict], splits: list[str], scales, native_rows: list[dict],
         max_minutes: float, ceiling: dict) -> None:
    """Accuracy vs trained minutes: one panel per split, one line per profile and scale (DPM++-20)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lab6.io import atomic_path
    styles = ["-", "--", ":", "-."]
    profiles = list(dict.fromkeys(b["profile"] for b in budgets_rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(splits), figsize=(4.6 * len(splits), 3.8), squeeze=False, sharey=True)
    for ax, split in zip(axes[0], splits):
        if ceiling.get(split) is not None:
            ax.axhline(ceiling[split], color="gray", linestyle="--", linewidth=1, label="ground-truth renders")
        for pi, prof in enumerate(profiles):
            pts = [b for b in budgets_rows if b["profile"] == prof]
            for si, w in enumerate(scales):
                ys = [mean_acc(b["rows"], split, float(w), setting_name(EVAL_SAMPLER, EVAL_STEPS)) for b in pts]
                if all(y is None for y in ys):  # a scale this profile is not sampled at
                    continue
                ys = [float("nan") if y is None else y for y in ys]
                ax.plot([b["train_min"] for b in pts], ys, styles[pi % 4], marker="o", color=colours[si % 10],
                        label=f"{prof} w={w:g}")
            nat = [r for r in native_rows if r["profile"] == prof and r["split"] == split]
            if nat:  # mean over seeds
                ax.plot([nat[0]["train_min"]], [sum(r["accuracy"] for r in nat) / len(nat)], marker="*",
                        markersize=12, linestyle="none", color=colours[(len(scales) + pi) % 10],
                        label=f"{prof} {nat[0]['sampler']} w={nat[0]['guidance']:g}")
        ax.set(title=f"{split} (DPM++-20)", xlabel="training minutes", ylim=(0, 1.02), xlim=(0, 1.05 * max_minutes))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("evaluator accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


class Session:
    """What every profile's run shares: the options, the folders, the machine, the label sets and the judge;
    and what the runs add for the report."""

    def __init__(self, args, out: Path, runs: Path, info: dict, load_start: dict, sets_by_split: dict, ev,
                 ceiling: dict):
        self.args, self.out, self.runs, self.info, self.load_start = args, out, runs, info, load_start
        self.sets_by_split, self.ev, self.ceiling = sets_by_split, ev, ceiling
        self.splits = list(sets_by_split)
        self.psets: dict = {}          # profile -> {split: the label sets it samples}
        self.budget_rows: list = []    # one per profile and budget, with its sample rows
        self.native_rows: list = []    # each profile's own sampler at the final budget
        self.notes: list = []
        self.profiles_info: dict = {}
        self.load_end: dict = {}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    max_steps = per_profile("--max-steps", args.max_steps, args.profiles)
    num_sets = per_profile("--num-sets", args.num_sets, args.profiles)
    s = open_session(args)
    t_bench = time.perf_counter()
    for prof in args.profiles:
        s.psets[prof] = {split: v[:num_sets[prof]] for split, v in s.sets_by_split.items()}
        run_profile(s, prof, max_steps[prof])
    header, table = budget_table(s)
    report = report_lines(s, header, table, time.perf_counter() - t_bench)
    print("\n" + "\n".join(report))
    write_results(s, header, table, report, time.perf_counter() - t_bench)
    return 0


def check_args(args) -> None:
    """Refuse bad options before anything is trained, a bad profile setting included."""
    from lab6.config import PROFILES
    from lab6.errors import ConfigError
    if args.budgets != sorted(args.budgets) or len(set(args.budgets)) != len(args.budgets) or args.budgets[0] <= 0:
        raise ConfigError(f"--budgets: must be positive and increasing, got {args.budgets}")
    if any(w < 0 for w in args.scales):
        raise ConfigError(f"--scales: must be >= 0 (1 = no guidance), got {args.scales}")
    if args.threads is not None and args.threads <= 0:
        raise ConfigError(f"--threads: must be > 0, got {args.threads}")
    for prof in args.profiles:
        if profile_spec(prof)[0] not in PROFILES:
            raise ConfigError(f"--profiles: unknown profile {prof!r}; choose from {', '.join(PROFILES)}")
        train_config(prof, Path("."), args, 1.0, None)  # a bad setting fails now, not after the first run


def open_session(args) -> Session:
    """The results folder, the machine, the label sets of each split and the evaluator with its ceiling."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    from lab6.data import DATA_DIR, CourseData
    from lab6.errors import ConfigError
    from lab6.io import ensure_writable_dir
    from lab6.sample import get_evaluator

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" at every budget
    out = ensure_writable_dir(args.out or C.default_out("quality"))
    runs = args.runs or (C.REPO / "outputs" / "bench" / out.name)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_start = C.load_average()
    info = C.machine_info(args.device)
    print(C.machine_line(info, load_start))
    print(f"results: {out}   training runs: {runs}")

    args.data = args.data or DATA_DIR / "synth"
    data = CourseData(args.data)
    sets_by_split = {}
    for split in args.splits:
        if not data.label_path(split).exists():
            print(f"note: {data.label_path(split)} not found; split {split} skipped")
            continue
        sets_by_split[split] = data.label_sets(split)
    if not sets_by_split:
        raise ConfigError(f"--splits: none of {', '.join(args.splits)} exists in {data.root}")
    ev = get_evaluator(args.evaluator, data.root, args.device)
    if ev is None:
        raise ConfigError(f"{data.root}: no evaluator to score samples with; pass --evaluator or train one with "
                          f"`lab6 train-evaluator --data {data.root}`")
    print(f"evaluator {ev.path}; splits {', '.join(f'{s} ({len(v)} sets)' for s, v in sets_by_split.items())}; "
          f"seeds {args.seeds}")
    ceiling = {s: C.ground_truth_accuracy(ev, data.root, s, len(v)) for s, v in sets_by_split.items()}
    if any(v is not None for v in ceiling.values()):
        print("evaluator on the ground-truth renders (<split>_gt/, the ceiling): "
              + ", ".join(f"{s} {a:.3f}" for s, a in ceiling.items() if a is not None))
    return Session(args, out, runs, info, load_start, sets_by_split, ev, ceiling)


def run_profile(s: Session, prof: str, max_steps: int | None) -> None:
    """Train one profile through every budget, evaluating at each, then sample it with its own sampler."""
    import torch
    run_dir = s.runs / file_stem(prof)
    cfg = train_config(prof, run_dir, s.args, s.args.budgets[-1], max_steps)
    # Classifier-free guidance needs the unconditional model that condition dropout trains; a recipe
    # without it (the seed report's) is sampled as it prescribes, without guidance.
    scales = s.args.scales if cfg.train.cond_drop_prob > 0 else [1.0]
    announce_profile(s, prof, cfg, scales)
    trained_s, step, last, segments = train_through_budgets(s, prof, run_dir, cfg, scales, max_steps)
    note_schedule_end(s, prof, cfg.train, trained_s, step, last)
    native = own_sampler(s, prof, run_dir, cfg, scales)
    s.profiles_info[prof] = {"run_dir": str(run_dir), "config": cfg.to_dict(), "segments": segments,
                             "torch_threads": torch.get_num_threads(), "native": native,
                             "train_minutes": round(trained_s / 60, 3), "final_step": step}
    if s.args.delete_runs:
        shutil.rmtree(run_dir, ignore_errors=True)


def announce_profile(s: Session, prof: str, cfg, scales) -> None:
    """Print what one evaluation costs and note the LR schedule and a missing condition dropout."""
    t, psets = cfg.train, s.psets[prof]
    evals = sum(len(v) for v in psets.values()) * len(s.args.seeds) * EVAL_STEPS \
        * sum(1 if w == 1 else 2 for w in scales)
    print(f"{prof}: each evaluation samples {', '.join(f'{k} {len(v)}' for k, v in psets.items())} label sets "
          f"= {evals} network evaluations of one image")
    sched = (f"{prof}: LR {t.lr_scheduler} with {t.lr_warmup_steps} warmup steps to {t.lr:g} over max_steps="
             f"{t.max_steps}, set once for the whole run; every budget resumes the same run, so the schedule "
             f"equals one uninterrupted run of {s.args.budgets[-1]:g} min, and it depends on steps, not minutes")
    s.notes.append(sched)
    print(sched)
    if t.cond_drop_prob == 0:
        s.notes.append(f"{prof}: trained without condition dropout (cond_drop_prob 0), so it has no unconditional "
                       f"model to guide with: sampled without guidance (scale 1) only, as its recipe prescribes")


def train_through_budgets(s: Session, prof: str, run_dir: Path, cfg, scales, max_steps: int | None):
    """Resume one run up to each cumulative budget and evaluate it there; (trained s, step, last segment, segments)."""
    t = cfg.train
    trained_s, step, last, evaluated = 0.0, 0, None, None
    segments: list[dict] = []
    for budget in s.args.budgets:
        remaining = 60 * budget - trained_s
        seg = None
        if step >= t.max_steps:
            print(f"{prof} @ {budget:g} min: no further training (max_steps={t.max_steps} reached earlier)")
        elif remaining <= 0:
            print(f"{prof} @ {budget:g} min: no further training (the previous segment overshot to "
                  f"{trained_s / 60:.2f} min (one step is that long))")
        else:
            seg = train_segment(prof, run_dir, s.args, remaining, max_steps, resume=step > 0)
            trained_s += seg["train_s"]
            step = seg["last_step"] if seg["last_step"] is not None else step
            last = seg
            segments.append({k: v for k, v in seg.items() if k != "config"} | {"budget_min": budget})
        ips = seg["steps"] * t.batch_size / seg["train_s"] if seg and seg["train_s"] > 0 else None
        load = C.load_average()["load_avg"][0]
        print(f"{prof} @ {budget:g} min: step {step} after {trained_s / 60:.2f} training minutes"
              + (f", {ips:.1f} img/s" if ips else "")
              + (f", lr {last['lr']:.3g}, loss {last['loss']:.4f}" if last else "") + f"; load {load}", flush=True)
        if seg is None and evaluated is not None:  # nothing trained since: the same weights, the same scores
            rows = [dict(r, reused=True) for r in evaluated]
        else:
            rows = evaluated = evaluate_budget(s, prof, run_dir, scales, budget)
        s.budget_rows.append({"profile": prof, "budget_min": budget, "train_min": trained_s / 60, "steps": step,
                              "max_steps": t.max_steps, "lr": last["lr"] if last else None,
                              "img_per_s": ips, "load_avg_1m": load, "rows": rows})
    return trained_s, step, last, segments


def evaluate_budget(s: Session, prof: str, run_dir: Path, scales, budget: float) -> list[dict]:
    """Sample every split with DPM-Solver++ 20 steps at every scale and seed, and score the images."""
    from lab6.sample import load_pipeline
    pipe = load_pipeline(run_dir, s.args.device)
    t0 = time.perf_counter()
    rows = sample_rows(pipe, s.ev, s.psets[prof], EVAL_SAMPLER, EVAL_STEPS, scales, s.args.seeds,
                       s.out / "grids", f"{file_stem(prof)}-{budget:g}min")
    print(f"  sampled and scored in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def note_schedule_end(s: Session, prof: str, t, trained_s: float, step: int, last: dict | None) -> None:
    """Note a run that reached max_steps before the last budget, or one whose LR schedule had not finished."""
    final = s.args.budgets[-1]
    if step >= t.max_steps and trained_s < 60 * final:
        s.notes.append(f"{prof}: training reached max_steps={t.max_steps} after {trained_s / 60:.2f} min, before "
                       f"the {final:g}-min budget; later budgets got no further training "
                       f"(pass --max-steps to train longer)")
    elif last is not None and step < t.max_steps:
        s.notes.append(f"{prof}: at {final:g} min the run was at step {step} of {t.max_steps}, LR "
                       f"{last['lr']:.3g} of peak {t.lr:g}: the {t.lr_scheduler} schedule had not finished")


def own_sampler(s: Session, prof: str, run_dir: Path, cfg, scales) -> dict:
    """The profile's own default sampler, steps and guidance at the final budget, when its estimated time fits."""
    from lab6.sample import load_pipeline
    final, own, psets = s.budget_rows[-1], cfg.sample, s.psets[prof]
    native = {"sampler": setting_name(own.sampler, own.num_steps), "guidance": own.guidance_scale}
    if s.args.native != "final":
        return native
    dpm = [r for r in final["rows"] if r["sampler"] == setting_name(EVAL_SAMPLER, EVAL_STEPS)]
    per_eval = sum(r["sample_seconds"] for r in dpm) / max(sum(r["evals"] for r in dpm), 1)
    evals = sum(len(v) for v in psets.values()) * len(s.args.seeds) * own.num_steps \
        * (1 if own.guidance_scale == 1 else 2)
    estimate = per_eval * evals / 60
    native["estimated_minutes"] = round(estimate, 3)
    if (own.sampler, own.num_steps) == (EVAL_SAMPLER, EVAL_STEPS) and own.guidance_scale in scales:
        native["skipped"] = "already measured in the DPM++-20 sweep"
    elif estimate > s.args.native_max_minutes:
        native["skipped"] = f"estimated {estimate:.3g} min > --native-max-minutes {s.args.native_max_minutes:g}"
    else:
        pipe = load_pipeline(run_dir, s.args.device)
        rows = sample_rows(pipe, s.ev, psets, own.sampler, own.num_steps, [own.guidance_scale], s.args.seeds,
                           s.out / "grids", f"{file_stem(prof)}-{final['budget_min']:g}min")
        s.native_rows += [r | {k: final[k] for k in BUDGET_KEYS} for r in rows]
        native["seconds"] = round(sum(r["sample_seconds"] for r in rows), 1)
    if "skipped" in native:
        s.notes.append(f"{prof}: own default sampler {native['sampler']} (guidance {own.guidance_scale:g}) "
                       f"not sampled: {native['skipped']}")
    return native


def budget_table(s: Session) -> tuple[list[str], list[list]]:
    """The printed table: one row per profile and budget, DPM++-20 accuracy per split and scale."""
    eval_name = setting_name(EVAL_SAMPLER, EVAL_STEPS)
    cols = [(split, float(w)) for split in s.splits for w in s.args.scales]
    header = ["profile", "budget", "train min", "steps", "img/s", "lr", "sets"] + [f"{k}@{w:g}" for k, w in cols]
    table = []
    for b in s.budget_rows:
        accs = [mean_acc(b["rows"], split, w, eval_name) for split, w in cols]
        table.append([b["profile"], f"{b['budget_min']:g}", f"{b['train_min']:.2f}", b["steps"],
                      "" if b["img_per_s"] is None else f"{b['img_per_s']:.1f}",
                      "" if b["lr"] is None else f"{b['lr']:.3g}",
                      min(len(v) for v in s.psets[b["profile"]].values()),
                      *["–" if a is None else f"{a:.3f}" for a in accs]])
    return header, table


def native_table(s: Session) -> list[list]:
    """One row per profile: its own default sampler at the final budget, or why it was skipped."""
    rows_out = []
    for prof, pinfo in s.profiles_info.items():
        nat = pinfo["native"]
        rows = [r for r in s.native_rows if r["profile"] == prof]
        if rows:
            accs = [sum(r["accuracy"] for r in rows if r["split"] == split) / len(s.args.seeds) for split in s.splits]
            extra = sum(r.get("unrequested", 0.0) for r in rows) / len(rows)
            rows_out.append([prof, nat["sampler"], f"{nat['guidance']:g}", f"{rows[0]['train_min']:.2f}",
                             rows[0]["steps"], *[f"{a:.3f}" for a in accs], f"{extra:.2f}", f"{nat['seconds']:.0f}"])
        elif "skipped" in nat:
            rows_out.append([prof, nat["sampler"], f"{nat['guidance']:g}", "", "", *["" for _ in s.splits], "",
                             f"skipped: {nat['skipped']}"])
    return rows_out


def report_lines(s: Session, header: list[str], table: list[list], total_s: float) -> list[str]:
    """report.txt: the budget table, the ceiling, the own-sampler table, the notes and the machine."""
    eval_name = setting_name(EVAL_SAMPLER, EVAL_STEPS)
    report = [f"Accuracy with {eval_name}, mean over seeds {s.args.seeds}; sets = label sets sampled per split; "
              f"img/s = training images per second in the segment; train min = minutes of training steps",
              C.format_table(header, table)]
    if any(v is not None for v in s.ceiling.values()):
        report.append("evaluator on the ground-truth renders of all sets (its ceiling): "
                      + ", ".join(f"{k} {a:.3f}" for k, a in s.ceiling.items() if a is not None))
    own = native_table(s)
    if own:
        report += ["", "Each profile's own default sampler at the final budget (extra = share of images showing an "
                       "object, evaluator p > 0.5, that no label asked for; the top-k accuracy does not see it)",
                   C.format_table(["profile", "sampler", "guidance", "train min", "steps", *s.splits, "extra",
                                   "seconds"], own, "lllrr" + "r" * (len(s.splits) + 1) + "l")]
    s.load_end = C.load_average()
    return report + ["", "notes:", *(f"- {n}" for n in s.notes), "",
                     C.machine_line(s.info, s.load_start),
                     f"load average at start {s.load_start['load_avg']}, at end {s.load_end['load_avg']}; "
                     f"total {total_s / 60:.1f} min"]


def csv_row(r: dict) -> list:
    """One quality.csv row of a sample row joined with its budget's figures."""
    v = r | {"train_min": round(r["train_min"], 3), "accuracy": round(r["accuracy"], 4),
             "train_img_per_s": None if r["img_per_s"] is None else round(r["img_per_s"], 2),
             "reused": bool(r.get("reused", False))}
    return [v.get(k) for k in CSV_HEADER]


def write_results(s: Session, header: list[str], table: list[list], report: list[str], total_s: float) -> None:
    """quality.csv, quality_table.csv, quality.png, quality.json and report.txt in the results folder."""
    from lab6.io import write_json, write_text
    args = s.args
    flat = [r | {k: b[k] for k in BUDGET_KEYS} for b in s.budget_rows for r in b["rows"]] + s.native_rows
    C.write_csv(s.out / "quality.csv", CSV_HEADER, [csv_row(r) for r in flat])
    C.write_csv(s.out / "quality_table.csv", header, table)
    plot(s.out / "quality.png", s.budget_rows, s.splits, args.scales, s.native_rows, args.budgets[-1], s.ceiling)
    write_json(s.out / "quality.json", {
        "benchmark": "bench_quality", "machine": s.info, "load_start": s.load_start, "load_end": s.load_end,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "evaluator": C.evaluator_info(s.ev), "ground_truth_accuracy": s.ceiling,
        "sets": {prof: {k: len(v) for k, v in s.psets[prof].items()} for prof in args.profiles},
        "eval_sampler": setting_name(EVAL_SAMPLER, EVAL_STEPS), "profiles": s.profiles_info, "notes": s.notes,
        "total_minutes": round(total_s / 60, 2),
        "rows": [{k: (round(v, 4) if isinstance(v, float) and not math.isnan(v) else v) for k, v in r.items()}
                 for r in flat]})
    write_text(s.out / "report.txt", "\n".join(report) + "\n")
    print(f"wrote {s.out}/: quality.csv, quality_table.csv, quality.png, quality.json, report.txt, grids/")


if __name__ == "__main__":
    sys.exit(C.run_main(main))
