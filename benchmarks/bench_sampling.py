"""Samplers of one trained model: evaluator accuracy and seconds for DDPM-1000, DDIM, DPM-Solver++ and its SDE.

    .venv/bin/python benchmarks/bench_sampling.py [--model DIR] [--split test] [--guidance default,1]
        [--seeds 0] [--settings DDPM-1000,DDIM-50,...] [--out DIR] [--device cpu]

Samples one image per label set of the split (test.json: 32 sets) with every setting of
lab6.compare.SAMPLER_SETTINGS, once with the model's default guidance scale and once without guidance (scale 1),
per seed, and scores each batch with the evaluator. Seconds are wall time of the whole batch (batch size 64,
after one warm-up call); with guidance each step runs the network on a doubled batch. Accuracy is the mean (and
spread) over --seeds.

Writes to --out (default benchmarks/results/sampling-<date>/): report.txt (the printed table), sampling.csv (one
row per setting, guidance and seed), sampling.json (machine, load averages, model, settings, rows, summary).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads stall a shared CPU

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CSV_HEADER = ["setting", "sampler", "steps", "guidance", "seed", "accuracy", "hits", "labels", "seconds",
              "images", "img_per_s", "unrequested"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None,
                   help="run folder, checkpoint or save_pretrained folder (default: pretrained/quick if it exists, "
                        "else outputs/quick/train)")
    p.add_argument("--data", default=None, help="dataset root with the label files and the evaluator "
                                                "(default data/iclevr if present, else data/synth)")
    p.add_argument("--split", default="test", help="label file to sample (default test: 32 label sets)")
    p.add_argument("--num-images", type=int, default=None, help="first N label sets of the split (default all)")
    p.add_argument("--settings", type=C.name_list, default=None,
                   help="comma-separated subset of the names in lab6.compare.SAMPLER_SETTINGS (default all: "
                        "DDPM-1000,DDIM-50,DDIM-25,DPM++-25,DPM++-20,DPM++-10,SDE-DPM++-25)")
    p.add_argument("--guidance", default="default,1",
                   help="guidance scales: numbers or 'default' (the model's own); default 'default,1'")
    p.add_argument("--seeds", type=C.int_list, default=[0], help="sampling seeds, averaged (default 0)")
    p.add_argument("--evaluator", default=None, help="evaluator checkpoint (default: found in --data)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default benchmarks/results/sampling-<date>/)")
    return p


def guidance_scales(text: str, default: float) -> list[float]:
    """'default,1' -> [model default, 1.0] without repeats."""
    from lab6.errors import ConfigError
    scales: list[float] = []
    for part in C.name_list(text):
        try:
            w = default if part == "default" else float(part)
        except ValueError:
            raise ConfigError(f"--guidance: expected numbers or 'default', got {part!r}") from None
        if w < 0:
            raise ConfigError(f"--guidance: must be >= 0 (1 = no guidance), got {w:g}")
        if w not in scales:
            scales.append(w)
    if not scales:
        raise ConfigError("--guidance: give at least one scale")
    return scales


def default_model() -> Path:
    """pretrained/quick when it holds a model, else outputs/quick/train (what notebooks 04-05 use)."""
    from lab6.run import run_model
    return run_model("quick", C.REPO / "outputs" / "quick")[0]


def cell(values: list[float]) -> str:
    """'0.406' for one seed, '0.406 +-0.021' (mean, standard deviation) for several."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +-{statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lab6.errors import ConfigError
    if args.num_images is not None and args.num_images <= 0:
        raise ConfigError(f"--num-images: must be > 0, got {args.num_images}")
    if args.threads is not None and args.threads <= 0:
        raise ConfigError(f"--threads: must be > 0, got {args.threads}")
    from lab6.compare import SAMPLER_SETTINGS
    known = {s[0]: s for s in SAMPLER_SETTINGS}
    chosen = args.settings or list(known)
    for name in chosen:
        if name not in known:
            raise ConfigError(f"--settings: unknown {name!r}; choose from {', '.join(known)}")
    settings = [known[n] for n in chosen]

    import torch
    from diffusers.utils import logging as diffusers_logging

    from lab6.compare import sampler_comparison
    from lab6.data import CourseData
    from lab6.io import ensure_writable_dir, write_json, write_text
    from lab6.model import count_parameters
    from lab6.sample import get_evaluator, load_pipeline, resolve_model, sample
    from lab6.schedules import sampler_name

    diffusers_logging.disable_progress_bar()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else default_model()
    kind, model_path = resolve_model(model)
    data = CourseData(args.data)
    if not data.label_path(args.split).exists():
        raise ConfigError(f"--split: {data.label_path(args.split)} not found; splits here: {', '.join(data.splits())}")
    sets = data.label_sets(args.split)[:args.num_images]
    ev = get_evaluator(args.evaluator, data.root, args.device)
    if ev is None:
        raise ConfigError(f"{data.root}: no evaluator to score samples with; pass --evaluator")
    out = ensure_writable_dir(args.out or C.default_out("sampling"))

    load_start = C.load_average()
    info = C.machine_info(args.device)
    pipe = load_pipeline(model, args.device)
    default_w = float(pipe.config.default_guidance_scale)
    scales = guidance_scales(args.guidance, default_w)
    model_info = {"path": str(model_path), "kind": kind, "parameters": count_parameters(pipe.unet),
                  "sample_size": pipe.unet.config.sample_size,
                  "prediction_type": pipe.scheduler.config.prediction_type,
                  "default_sampler": sampler_name(pipe.scheduler),
                  "default_steps": pipe.config.default_num_inference_steps, "default_guidance": default_w}
    print(C.machine_line(info, load_start))
    print(f"model {model_path} ({kind}, {model_info['parameters'] / 1e6:.2f} M parameters, "
          f"{model_info['sample_size']}px, {model_info['prediction_type']}; default {model_info['default_sampler']} "
          f"{model_info['default_steps']} steps, guidance {default_w:g})")
    print(f"{args.split}: {len(sets)} label sets; evaluator {ev.path}; guidance {scales}; seeds {args.seeds}")
    ceiling = C.ground_truth_accuracy(ev, data.root, args.split, len(sets))

    sample(pipe, sets[:2], num_steps=2, guidance_scale=scales[0], seed=0)  # warm-up (first-call overheads)
    t_bench = time.perf_counter()
    rows = []
    for w in scales:
        for name, sampler, steps in settings:
            for seed in args.seeds:
                r = sampler_comparison(pipe, sets, ev, guidance_scale=w, settings=[(name, sampler, steps)],
                                       seed=seed)[name]
                rows.append({"setting": name, "sampler": sampler, "steps": steps, "guidance": w, "seed": seed,
                             "accuracy": round(r["accuracy"], 4), "hits": r["hits"], "labels": r["labels"],
                             "seconds": r["seconds"], "images": len(sets),
                             "img_per_s": round(len(sets) / max(r["seconds"], 1e-9), 2),
                             "unrequested": round(r["unrequested"], 4)})
                print(f"  {name:<10} guidance {w:<4g} seed {seed}: accuracy {r['accuracy']:.3f} "
                      f"in {r['seconds']:.1f} s", flush=True)

    summary, table = [], []
    for name, _sampler, steps in settings:
        line = [name, steps]
        for w in scales:
            sel = [r for r in rows if r["setting"] == name and r["guidance"] == w]
            secs = statistics.mean(r["seconds"] for r in sel)
            accs = [r["accuracy"] for r in sel]
            extra = statistics.mean(r["unrequested"] for r in sel)
            summary.append({"setting": name, "steps": steps, "guidance": w, "accuracy_mean": statistics.mean(accs),
                            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                            "seconds_mean": round(secs, 2), "img_per_s": round(len(sets) / secs, 2),
                            "unrequested_mean": round(extra, 4)})
            line += [cell(accs), f"{secs:.1f}", f"{len(sets) / secs:.2f}", f"{extra:.2f}"]
        table.append(line)
    header = ["setting", "steps"]
    for w in scales:
        tag = f"w={w:g}" + (" (default)" if w == default_w and len(scales) > 1 else "")
        header += [f"acc {tag}", f"s {tag}", f"img/s {tag}", f"extra {tag}"]
    load_end = C.load_average()
    seeds = f"mean +-sd over seeds {args.seeds}" if len(args.seeds) > 1 else f"seed {args.seeds[0]}"
    report = [f"{args.split}: {len(sets)} images per run; accuracy ({seeds}), seconds per run, images per second, "
              f"extra = share of images showing an object (evaluator p > 0.5) that no label asked for",
              C.format_table(header, table),
              *([f"evaluator on the ground-truth renders of these sets (its ceiling): {ceiling:.3f}"]
                if ceiling is not None else []), "",
              f"model {model_path}: {model_info['parameters'] / 1e6:.2f} M parameters, {model_info['sample_size']}px",
              C.machine_line(info, load_start),
              f"load average at start {load_start['load_avg']}, at end {load_end['load_avg']}; "
              f"total {(time.perf_counter() - t_bench) / 60:.1f} min"]
    print("\n" + "\n".join(report))

    C.write_csv(out / "sampling.csv", CSV_HEADER, [[r[k] for k in CSV_HEADER] for r in rows])
    write_json(out / "sampling.json", {
        "benchmark": "bench_sampling", "machine": info, "load_start": load_start, "load_end": load_end,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": model_info, "split": args.split, "images": len(sets), "evaluator": C.evaluator_info(ev),
        "ground_truth_accuracy": ceiling,
        "guidance": scales, "rows": rows, "summary": summary,
        "total_minutes": round((time.perf_counter() - t_bench) / 60, 2)})
    write_text(out / "report.txt", "\n".join(report) + "\n")
    print(f"wrote {out}/: sampling.csv, sampling.json, report.txt")
    return 0


if __name__ == "__main__":
    sys.exit(C.run_main(main))
