"""Fidelity of a model beyond top-k: exact-scene accuracy, FID / KID against ground truth, wrong-shape misses.

    .venv/bin/python benchmarks/bench_fidelity.py --models pretrained/quick [--settings SDE-DPM++-25@4,DPM++-20@2]
        [--seeds 0-10] [--data data/synth] [--out DIR]

For every model and setting (a lab6.compare.SAMPLER_SETTINGS name, or one with another step count such as
SDE-DPM++-18, or none for the model's own sampler, `@w` for the
guidance scale, `+o` for composable guidance of weight o per object beside it, `:shift` / `:noshift` to move the patch
grid at every step or not, `:bf16` to run the network under bf16 autocast; default the model's), samples each
label set of test, new_test and unseen_test once per seed and reports per split the course's top-k accuracy and the
count checker's exact-scene accuracy (mean over seeds), the share of images with a duplicated / unrequested /
missing object, the evaluator's wrong-shape misses, and pooled over all images FID and KID on the evaluator's
features against fresh renders of the same label sets (render seed 7000). The first rows are the ground truth itself
(render seed 7000 against 8000): the ceilings of the two readers and the floor of FID / KID. The grain column is the
spectral power at the model's patch grid (period `--grain-period`, default 4, its harmonics included) over the
ground truth's at the same bins (`lab6.fidelity.grain`; 1 = none).
`--judges EV:CK,EV2:CK2` reads the same images with more than one pair of judges (a row each; the first pair
also gives FID / KID). Writes results.json, a CSV and, per model and setting, a figure of generated images beside
the ground truth of the same test label sets.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    default_out,
    evaluator_info,
    format_table,
    int_list,
    load_average,
    machine_info,
    machine_line,
    run_main,
    write_csv,
)

from lab6.checker import CountChecker  # noqa: E402
from lab6.compare import SAMPLER_SETTINGS  # noqa: E402
from lab6.data import CourseData, from_uint8  # noqa: E402
from lab6.evaluator import WRONG_SHAPE, Evaluator, find_evaluator, summarize  # noqa: E402
from lab6.fidelity import fid_kid, grain  # noqa: E402
from lab6.plots import side_by_side  # noqa: E402
from lab6.sample import load_pipeline, sample  # noqa: E402
from lab6.synth import render_labels  # noqa: E402

REAL_SEED, FLOOR_SEED = 7000, 8000  # render seeds of the ground truth and of the floor; never a dataset's
HEADER = ["model", "setting", "judges", "split", "top-k", "exact", "duplicate", "unrequested", "missing",
          "wrong shape", "FID", "KID x1e3", "grain", "s / 32 img"]


def parse_settings(text: str) -> list[tuple[str | None, str | None, int | None, float | None, float | None,
                                             bool | None, str | None]]:
    """'SDE-DPM++-25@4,DPM++-20,@3+1:shift:bf16' -> [(name, sampler, steps, guidance, per-object guidance, shifted
    patches, precision)], None meaning the model's own; a bare '@w+o' keeps the model's sampler, '+o' adds composable
    guidance of weight o per object, ':shift' / ':noshift' moves (or keeps) the patch grid at every step, ':bf16'
    runs the network under bf16 autocast."""
    known = {s[0]: s for s in SAMPLER_SETTINGS}
    families = {name.rsplit("-", 1)[0]: sampler for name, sampler, _ in SAMPLER_SETTINGS}  # SDE-DPM++-18 and such
    shifts = {"": None, "shift": True, "noshift": False}
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        item, *flags = item.split(":")
        if any(f not in ("shift", "noshift", "bf16") for f in flags) or sum(f != "bf16" for f in flags) > 1:
            raise SystemExit(f"error: --settings: {':'.join(flags)!r}: expected ':shift' or ':noshift', then "
                             "optionally ':bf16', after a setting")
        shift = next((f for f in flags if f != "bf16"), "")
        name, _, scales = item.partition("@")
        family, _, steps = name.rpartition("-")
        if name and name not in known and family in families and steps.isdigit() and int(steps) > 0:
            known[name] = (name, families[family], int(steps))
        if name and name not in known:
            raise SystemExit(f"error: --settings: unknown {name!r}; choose from {', '.join(known)} or another step "
                             f"count of one of them (or none: '@w')")
        w, _, o = scales.partition("+")
        try:
            w, o = (float(w) if w else None), (float(o) if o else None)
        except ValueError:
            raise SystemExit(f"error: --settings: {item!r}: expected NAME@w or NAME@w+o with numbers") from None
        out.append((name or None, *(known[name][1:3] if name else (None, None)), w, o, shifts[shift],
                    "bf16" if "bf16" in flags else None))
    return out


def reading(ev: Evaluator, ck: CountChecker, images: torch.Tensor, sets: list[list[str]]) -> dict:
    """Top-k, exact-scene accuracy and miss kinds of images (N, 3, 64, 64) for their label sets."""
    hits, total = ev.score(images, sets)
    return {"top-k": hits / total, **ck.report(images, sets),
            "wrong shape": summarize(ev.breakdown(images, sets)).get(WRONG_SHAPE, 0)}


def figure(generated: torch.Tensor, truth: torch.Tensor, sets: list[list[str]], path: Path) -> None:
    """Generated images above the ground truth of the same label sets, captioned."""
    side_by_side(generated, truth, sets).savefig(path, dpi=110, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="pretrained/quick", help="comma-separated model folders")
    parser.add_argument("--settings", default="", help="sampler settings, e.g. SDE-DPM++-25@4 or @3+1 "
                                                         "(default: the model's)")
    parser.add_argument("--seeds", default="0-10", help="sampling seeds, e.g. 0-10 (11 x 96 = 1056 images)")
    parser.add_argument("--data", default="data/synth", help="dataset root with the three test files")
    parser.add_argument("--evaluator", default=None, help="evaluator checkpoint (default: found for --data)")
    parser.add_argument("--checker", default=None, help="count checker (default pretrained/checker/checker.pth)")
    parser.add_argument("--judges", default=None, metavar="EV:CK,...",
                        help="pairs of evaluator and checker files that each read the same images (overrides "
                             "--evaluator and --checker; 'default' stands for the default file)")
    parser.add_argument("--grain-period", type=int, default=4, help="pixel period of the grain figure (default 4)")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results/fidelity-<time>)")
    args = parser.parse_args(argv)
    lo, dash, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi) + 1)) if dash else int_list(args.seeds)
    out = Path(args.out) if args.out else default_out("fidelity")
    out.mkdir(parents=True, exist_ok=True)
    load = {"start": load_average()}
    data = CourseData(args.data)
    pairs = [p.split(":") for p in args.judges.split(",")] if args.judges else [[args.evaluator, args.checker]]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"error: --judges: expected EV:CK pairs separated by commas, got {args.judges!r}")
    judges = [(Evaluator(find_evaluator(None if e in (None, "default") else e, data_root=data.root)),
               CountChecker(None if c in (None, "default") else c)) for e, c in pairs]
    ev = judges[0][0]
    splits = {s: data.label_sets(s) for s in data.splits()}
    all_sets = [s for _ in seeds for split in splits for s in splits[split]]
    where = [split for _ in seeds for split in splits for _ in splits[split]]  # the split of each image
    real = from_uint8(render_labels(all_sets, seed=REAL_SEED))      # (N, 3, 64, 64), a fresh render seed
    floor = from_uint8(render_labels(all_sets, seed=FLOOR_SEED))
    rows, results = [], {"machine": machine_info(), "evaluator": evaluator_info(ev), "checker": str(judges[0][1].path),
                         "judges": [[str(e.path), str(c.path)] for e, c in judges],
                         "seeds": seeds, "images": len(all_sets), "runs": []}

    def record(model: str, setting: str, images: torch.Tensor, seconds: float | None) -> None:
        pooled = fid_kid(real, images, ev)
        n_rows = len(rows)
        for j, (jev, jck) in enumerate(judges):
            per = {}
            for split in splits:
                idx = [i for i, s in enumerate(where) if s == split]
                sets = [all_sets[i] for i in idx]
                per[split] = {**reading(jev, jck, images[idx], sets),
                              "grain": grain(images[idx], real[idx], args.grain_period)}
                rows.append([model, setting, f"#{j + 1}", split, f"{per[split]['top-k']:.3f}",
                             f"{per[split]['exact']:.3f}", f"{per[split]['duplicate']:.3f}",
                             f"{per[split]['unrequested']:.3f}", f"{per[split]['missing']:.3f}",
                             per[split]["wrong shape"], f"{pooled['fid']:.2f}", f"{1e3 * pooled['kid']:.2f}",
                             f"{per[split]['grain']:.2f}", "" if seconds is None else f"{seconds:.1f}"])
            results["runs"].append({"model": model, "setting": setting, "judges": j + 1, "per_split": per, **pooled,
                                    "seconds_per_32": seconds})
        print(format_table(HEADER, rows[n_rows:]), flush=True)

    record("ground truth", f"render seed {FLOOR_SEED} vs {REAL_SEED}", floor, None)
    for model in filter(None, args.models.split(",")):
        pipe = load_pipeline(model, device="cpu")
        for name, sampler, steps, w, o, shift, precision in parse_settings(args.settings) or [(None,) * 7]:
            chunks, t0 = [], time.perf_counter()
            for seed in seeds:
                for split in splits:
                    chunks.append(sample(pipe, splits[split], sampler=sampler, num_steps=steps, guidance_scale=w,
                                         seed=seed, object_guidance_scale=o, shift_patches=shift,
                                         precision=precision).images)
            seconds = (time.perf_counter() - t0) / len(chunks)
            images = torch.cat(chunks)
            o = pipe.resolve_object_scale(o)
            shift = pipe.resolve_shift_patches(shift)
            label = (f"{name or 'default'}@{w if w is not None else pipe.config.default_guidance_scale:g}"
                     + (f"+{o:g}" if o else "") + (":shift" if shift else "") + (f":{precision}" if precision else ""))
            record(model, label, images, seconds)
            folder = Path(model)  # an export folder named pipeline/ or fp16/ is named by its run
            name = f"{folder.parent.name}-{folder.name}" if folder.name in ("pipeline", "fp16") else folder.name
            tag = f"{name}-{label}".replace("@", "-w").replace("+", "p").replace(":", "-")
            figure(images[:32], real[:32], all_sets[:32], out / f"{tag}.png")
    load["end"] = load_average()
    results["load_average"] = load
    print("\n" + machine_line(results["machine"], load["end"]))
    print("judges: " + "; ".join(f"#{j + 1} {e.path} + {c.path}" for j, (e, c) in enumerate(judges)))
    print(format_table(HEADER, rows))
    write_csv(out / "fidelity.csv", HEADER, rows)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
