"""Commit one chunk's export here: the weights, every stage in stages.json, its log and bench, a card with its scores.

    .venv/bin/python pretrained/quick/pack.py RUN K [--fidelity DIR] [--device "CPU (AMD EPYC), 2 threads"]
        [--fixed-grid DIR2 --s S]

RUN is the chunk's `lab6 train --out` folder (its pipeline/ is the export, fp16 by the recipe's export_dtype), K the
chunk's number, DIR the `bench_fidelity.py --models RUN/pipeline` folder that read it. The export names the machine's
paths and lists only the stages its own --init-from folder knew; here the stages of the model committed before it
come first, paths are the repository's, and the log and bench land beside it as metrics-chunk<K>.jsonl and
fidelity-chunk<K>.csv. With --fixed-grid (the same read with `--settings @3:noshift`) and --s (the machine's S by
`benchmarks/bench_step.py`) it also writes scores.json, the figures the README's Results table renders. Run from the
repository root.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import shutil
import sys
from pathlib import Path

from lab6.card import CARD_FILE, model_card
from lab6.checkpoints import EXPORT_STEP_FILE, load_run_config
from lab6.config import to_yaml
from lab6.io import write_json, write_text
from lab6.records import SCORES_FILE, STAGES_FILE, read_stages

HERE = Path("pretrained/quick")
COPIED = ("model_index.json", "unet", "scheduler", "lab6_pipeline.py", EXPORT_STEP_FILE)


def bench_rows(fidelity: Path, model: str) -> tuple[str, dict[str, dict[str, float]]]:
    """fidelity.csv with the model named `model`, and its {metric: {split: value}} for the card."""
    rows = list(csv.DictReader(io.StringIO((fidelity / "fidelity.csv").read_text())))
    mine = [r for r in rows if r["model"] != "ground truth"]
    for r in mine:
        r["model"] = model
    scores = {name: {r["split"]: float(r[key]) for r in mine}
              for name, key in (("top-k accuracy", "top-k"), ("exact scenes", "exact"),
                                ("images with a duplicate", "duplicate"), ("grain", "grain"))}
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue(), scores


def scores_json(moving: Path, fixed: Path, s: float, chunk: int) -> dict:
    """scores.json (lab6.records.SCORES_SHAPE) from the default sampler's read and the fixed-grid read."""
    splits = ["test", "new_test", "unseen_test"]
    res = json.loads((moving / "results.json").read_text())
    gt, m = (next(r for r in res["runs"] if (r["model"] == "ground truth") == want) for want in (True, False))
    n = next(r for r in json.loads((fixed / "results.json").read_text())["runs"] if r["model"] != "ground truth")

    def row(label: str, run: dict, *keys: str, digits: int = 3) -> dict:
        pick = [[round(run["per_split"][sp][k], digits) for k in keys] for sp in splits]
        return {"label": label, "values": {sp: v if len(v) > 1 else v[0] for sp, v in zip(splits, pick)}}

    sec, date = m["seconds_per_32"], res["machine"].get("date") or datetime.date.today().isoformat()
    return {
        "model": str(HERE), "splits": splits,
        "figures": {
            "top_k": row("top-k accuracy (the course's metric)", m, "top-k"),
            "exact_scenes": row("exact scenes: exactly the requested objects", m, "exact"),
            "fixed_grid": row("the same model with its patch grid fixed (shift_patches off): top-k / exact", n,
                              "top-k", "exact"),
            "duplicates": row("images with a requested object drawn twice or more", m, "duplicate"),
            "grain": row("grain: power at the 4-pixel patch grid / the ground truth's (1 = none)", m, "grain", digits=2),
            "grain_fixed_grid": row("grain with the patch grid fixed", n, "grain", digits=2),
            "judges_ceiling": row("the judges' ceiling on ground truth: top-k / exact", gt, "top-k", "exact"),
        },
        "fid": {"model": round(m["fid"], 1), "ground_truth": round(gt["fid"], 1),
                "features": "the light-robust evaluator's (judge #1 of the run)"},
        "sampling": {"sampler": "SDE-DPM-Solver++", "steps": 25, "guidance": 3.0, "shift_patches": True,
                     "seconds_per_32_images": round(sec, 1), "img_per_s": round(32 / sec, 1),
                     "measured_on": f"2-core CPU (AMD EPYC) at S = {s:g} img/s, alone, {date} "
                                    f"(about {sec * s / 30:.0f} s at S = 30)"},
        "provenance": {
            "seeds": res["seeds"], "images": res["images"],
            "data": "the default synthetic renders (lab6 synth --out data/synth, seed 0); ground truth: fresh renders "
                    "of the same label sets",
            "judges": {"top_k": "pretrained/evaluator/checkpoint.pth (the course's ResNet-18 format, trained on this "
                                "project's renders, fine-tuned to read through changes of light)",
                       "exact_scenes": "pretrained/checker/checker.pth (the count checker, fine-tuned likewise in four "
                                       "rounds; each image read with its mirror image)",
                       "fid": "FID on the pooled features of the shipped evaluator (lab6.fidelity)"},
            "machine": f"2-core CPU (AMD EPYC, 2 threads; S = {s:g} img/s)",
            "command": f".venv/bin/python benchmarks/bench_fidelity.py --models {HERE} --seeds 0-10 --settings "
                       "@3:shift,@3:noshift --judges default:default --data data/synth",
            "results": f"{HERE}/fidelity-chunk{chunk}.csv and fidelity-chunk{chunk}-fixed-grid.csv",
            "date": date,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the chunk's lab6 train --out folder")
    parser.add_argument("chunk", type=int, help="the chunk's number")
    parser.add_argument("--fidelity", type=Path, help="bench_fidelity.py --out folder that read RUN/pipeline")
    parser.add_argument("--device", help="the machine in words, in place of the export's (e.g. 'CPU (AMD EPYC), "
                                         "2 threads')")
    parser.add_argument("--fixed-grid", type=Path, help="bench_fidelity.py --out folder of the @3:noshift read")
    parser.add_argument("--s", type=float, help="the machine's S (img/s by benchmarks/bench_step.py), for scores.json")
    args = parser.parse_args(argv)
    if (args.fixed_grid is None) != (args.s is None) or (args.fixed_grid and not args.fidelity):
        parser.error("--fixed-grid and --s go together, with --fidelity")
    src = args.run / "pipeline"
    if not (src / STAGES_FILE).is_file():
        print(f"error: {src}: no {STAGES_FILE} (expected a lab6 train export)", file=sys.stderr)
        return 1

    cfg = load_run_config(src)
    cfg.train.output_dir, cfg.train.data_root = f"outputs/quick-c{args.chunk}", "data/synth"
    cfg.train.init_from = str(HERE) if args.chunk > 1 else None
    stage = read_stages(src)[-1]
    stage |= {"init_from": f"{HERE} (chunk {args.chunk - 1})" if args.chunk > 1 else None,
              "recipe": str(HERE / Path(stage["recipe"]).name) if stage.get("recipe") else None,
              "log": str(HERE / f"metrics-chunk{args.chunk}.jsonl")}
    if args.device:
        stage["device"] = args.device
    earlier = read_stages(HERE) if args.chunk > 1 else []
    stages = [s for s in earlier if s.get("log") != stage["log"]] + [stage]  # packing a chunk again replaces it

    scores = judges = None
    if args.fidelity:
        table, scores = bench_rows(args.fidelity, str(HERE))
        seeds = json.loads((args.fidelity / "results.json").read_text()).get("seeds")
        judges = (f"the shipped evaluator and count checker over seeds {seeds} of each file, the default sampler "
                  f"(`benchmarks/bench_fidelity.py`, fidelity-chunk{args.chunk}.csv)")
        write_text(HERE / f"fidelity-chunk{args.chunk}.csv", table)
    if args.fixed_grid:
        write_text(HERE / f"fidelity-chunk{args.chunk}-fixed-grid.csv", bench_rows(args.fixed_grid, str(HERE))[0])
        write_json(HERE / SCORES_FILE, scores_json(args.fidelity, args.fixed_grid, args.s, args.chunk))

    for name in COPIED:
        target = HERE / name
        if target.is_dir():
            shutil.rmtree(target)
        (shutil.copytree if (src / name).is_dir() else shutil.copy2)(src / name, target)
    shutil.copy2(args.run / "metrics.jsonl", HERE / f"metrics-chunk{args.chunk}.jsonl")
    write_text(HERE / "lab6_config.yaml", to_yaml(cfg))
    write_json(HERE / STAGES_FILE, stages)
    step = json.loads((src / EXPORT_STEP_FILE).read_text())["step"]
    write_text(HERE / CARD_FILE, model_card(cfg, step, scores, judges, stages=stages))
    print(f"{HERE}: chunk {args.chunk} from {src}, {len(stages)} stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
