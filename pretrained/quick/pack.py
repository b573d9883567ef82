"""Commit one chunk's export here: the weights, every stage in stages.json, its log and bench, a card with its scores.

    .venv/bin/python pretrained/quick/pack.py RUN K [--fidelity DIR] [--device "CPU (AMD EPYC), 2 threads"]

RUN is the chunk's `lab6 train --out` folder (its pipeline/ is the export, fp16 by the recipe's export_dtype), K the
chunk's number, DIR the `bench_fidelity.py --models RUN/pipeline` folder that read it. The export names the machine's
paths and lists only the stages its own --init-from folder knew; here the stages of the model committed before it
come first, paths are the repository's, and the log and bench land beside it as metrics-chunk<K>.jsonl and
fidelity-chunk<K>.csv. Run from the repository root.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
from pathlib import Path

from lab6.card import CARD_FILE, model_card
from lab6.checkpoints import EXPORT_STEP_FILE, load_run_config
from lab6.config import to_yaml
from lab6.io import write_json, write_text
from lab6.records import STAGES_FILE, read_stages

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the chunk's lab6 train --out folder")
    parser.add_argument("chunk", type=int, help="the chunk's number")
    parser.add_argument("--fidelity", type=Path, help="bench_fidelity.py --out folder that read RUN/pipeline")
    parser.add_argument("--device", help="the machine in words, in place of the export's (e.g. 'CPU (AMD EPYC), "
                                         "2 threads')")
    args = parser.parse_args(argv)
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
