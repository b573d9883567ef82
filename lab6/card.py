"""The model card (README.md) of an export: what it draws, how it was trained, its scores, how to load it."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .config import Config
from .pipeline import PIPELINE_FILE, UNET_FILE
from .records import STAGES_FILE, describe_stage, read_stages

CARD_FILE = "README.md"
VALIDATION_JUDGE = ("the course-format evaluator (`train.evaluator`, else the one beside the data, else "
                    "pretrained/evaluator/checkpoint.pth): top-k accuracy on the first {n} label sets of each split, "
                    "sampled with the model's default sampler")


def validation_scores(metrics_file: str | os.PathLike) -> tuple[int, dict[str, float]] | None:
    """(step, {split: accuracy}) of the last validation a run's metrics.jsonl records, or None when it has none."""
    last = None
    try:
        lines = Path(metrics_file).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        acc = {k[:-len("_acc")]: v for k, v in record.items() if k.endswith("_acc")} if isinstance(record, dict) else {}
        if acc:
            last = (record.get("step"), acc)
    return last


def run_scores(cfg: Config, metrics_file: str | os.PathLike) -> tuple[dict[str, dict[str, float]], str] | None:
    """(scores, judges) for a card from a run's validation records, or None when the run recorded none."""
    found = validation_scores(metrics_file)
    if found is None:
        return None
    step, acc = found
    return {f"top-k accuracy at step {step}": acc}, VALIDATION_JUDGE.format(n=cfg.train.validate_num)


def _scores_table(scores: dict[str, dict[str, float]]) -> list[str]:
    splits = list(dict.fromkeys(s for row in scores.values() for s in row))
    lines = ["| | " + " | ".join(splits) + " |", "| --- |" + " ---: |" * len(splits)]
    for name, row in scores.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[s]:.3f}" if s in row else "" for s in splits) + " |")
    return lines


def _stages_lines(stages: list[dict]) -> list[str]:
    return ["", f"Every stage that made these weights (`{STAGES_FILE}`), oldest first:", "",
            *[f"{i}. {describe_stage(st)}" for i, st in enumerate(stages, 1)]]


def model_card(cfg: Config, step: int | None = None, scores: dict[str, dict[str, float]] | None = None,
               judges: str | None = None, notes: str | None = None, stages: list[dict] | None = None,
               folder: str | os.PathLike | None = None) -> str:
    """The README.md of an export; scores: {metric: {split: value}}, judges: who read them; stages: its training
    stages (else those of `folder`'s stages.json, if it has one)."""
    stages = stages if stages is not None else read_stages(folder)
    m, t, s = cfg.model, cfg.train, cfg.sample
    # The last stage names its start as it was then (a folder may since hold a later model); the config, the path.
    start = stages[-1].get("init_from") if stages else t.init_from
    steps = f"{step} steps" if step is not None else f"up to {t.max_steps} steps"
    extras = [f"object tokens ({m.object_tokens} wide{'' if m.multi_hot else ', the only condition'}"
              f"{', read at every level' if m.tokens_every_level else ''})"
              if m.object_tokens else "",
              f"a pixel head ({m.pixel_head} wide)" if m.pixel_head else "",
              "an embedding of the number of objects" if m.object_count else ""]
    lines = [
        "---", "library_name: diffusers", "tags: [diffusers, ddpm, conditional-image-generation, clevr, lab6]", "---",
        f"# lab6 `{cfg.profile}`: CLEVR-style scenes from object labels",
        "",
        f"A conditional DDPM that draws a {m.output_size}×{m.output_size} scene of 1–3 objects from a label set such "
        "as `[\"red sphere\", \"cyan cube\"]`: 24 objects, 8 colours (gray, red, blue, green, brown, purple, cyan, "
        "yellow) × 3 shapes (cube, sphere, cylinder). The network is lab6's `ConditionalUNet`: a diffusers "
        f"`UNet2DModel` (channels {', '.join(map(str, m.block_out_channels))}) on {m.patch_size}×{m.patch_size} "
        f"patches of a {m.sample_size}×{m.sample_size} image"
        + (", the multi-hot label set added to its time embedding" if m.multi_hot else "")
        + "".join(f", {e}" for e in extras if e) + f"; {cfg.schedule.prediction_type} on the "
        f"{cfg.schedule.beta_schedule} schedule ({cfg.schedule.num_train_timesteps} steps).",
        "",
        "## Training",
        "",
        f"`lab6 train --profile {cfg.profile}` with the settings in `lab6_config.yaml`: {steps} at batch "
        f"{t.batch_size}, learning rate {t.lr:g} ({t.lr_scheduler}), mixed precision "
        f"{t.mixed_precision} on CUDA (a CPU trains in float32), classifier-free guidance dropout {t.cond_drop_prob:g}; "
        f"the EMA weights (decay {t.ema_decay:g}) are what this folder holds, on data from `{t.data_root}`"
        + (f", started from `{start}`" if start else "") + ".",
        "",
        f"Default sampler: {s.sampler}, {s.num_steps} steps, guidance scale {s.guidance_scale:g}"
        + (", the patch grid moved by a few pixels at every step (`shift_patches`)"
           if s.shift_patches and m.patch_size > 1 else "") + " (model_index.json).",
    ]
    if stages:
        lines += _stages_lines(stages)
    if notes:
        lines += ["", notes]
    lines += ["", "## Scores", ""]
    if scores:
        lines += _scores_table(scores) + ["", f"Read by {judges}." if judges else ""]
    else:
        why = " (`train.validate_num: 0`)" if cfg.train.validate_num == 0 else ""
        lines += [f"The run that wrote this folder recorded no scores{why}; score it with "
                  "`lab6 sample --model <this folder> --labels test.json --out images`."]
    lines += [
        "", "## Loading it", "",
        "With lab6 installed (`pip install -e .` in its repository):", "",
        "```python", "import torch", "from lab6.pipeline import ConditionalDDPMPipeline",
        "pipe = ConditionalDDPMPipeline.from_pretrained(\"<this folder>\")",
        "image = pipe(labels=[[\"red sphere\", \"cyan cube\"]], generator=torch.Generator().manual_seed(0)).images[0]",
        "```", "",
        f"With diffusers alone (torch, diffusers, numpy, Pillow): the folder carries the code, `{PIPELINE_FILE}` and "
        f"`unet/{UNET_FILE}`, copies of lab6's `lab6/pipeline.py` and `lab6/model.py`; read them before trusting them.",
        "", "```python", "import torch", "from diffusers import DiffusionPipeline",
        "pipe = DiffusionPipeline.from_pretrained(\"<this folder>\", trust_remote_code=True)",
        "image = pipe(labels=[[\"red sphere\", \"cyan cube\"]], generator=torch.Generator().manual_seed(0)).images[0]",
        "```", "",
    ]
    return "\n".join(lines)
