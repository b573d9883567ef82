"""The record that lives with a model folder: `stages.json` (how it was trained, every stage) and `scores.json`
(what it scored, read by which judges, on which machine, with which command).

stages.json is a list, oldest first, of {steps, images, batch_size, lr, lr_scheduler, timestep_sampling,
min_snr_gamma, foreground_weight, precision (as run: bf16 only on CUDA), device, minutes, img_per_s, init_from,
profile, recipe, date}; `lab6 train` writes it into its export, after the stages of the model it started from.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from .config import Config
from .errors import CheckpointError

STAGES_FILE = "stages.json"
SCORES_FILE = "scores.json"


# ---------------------------------------------------------------- stages.json
def read_stages(folder: str | os.PathLike | None) -> list[dict]:
    """The stages of a model folder (or of the export holding a unet/ folder given), [] when it has none."""
    if folder is None:
        return []
    folder = Path(folder)
    path = (folder.parent if folder.name == "unet" else folder) / STAGES_FILE
    if not path.is_file():
        return []
    try:
        stages = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); expected a JSON list of training stages") from None
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise CheckpointError(f"{path}: expected a JSON list of training stages ({{steps, images, ...}} each)")
    return stages


def run_speed(metrics_file: str | os.PathLike) -> tuple[float | None, float | None]:
    """(minutes trained, median img/s) from a run's metrics.jsonl; a resumed run's clock restarts, so its
    segments are added up."""
    minutes, last, speeds = 0.0, 0.0, []
    try:
        lines = Path(metrics_file).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None, None
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if not isinstance(rec, dict) or "elapsed_s" not in rec:
            continue
        if rec["elapsed_s"] < last:  # a resume: the previous segment ended at `last`
            minutes += last / 60
        last = rec["elapsed_s"]
        speeds.append(rec.get("img_per_s", 0.0))
    if not speeds:
        return None, None
    return round(minutes + last / 60, 1), round(statistics.median(speeds), 1)


def training_stage(cfg: Config, steps: int, processes: int, precision: str, device: str, minutes: float | None,
                   img_per_s: float | None, recipe: str | None, date: str) -> dict:
    """One stage of stages.json: what this run did, with the precision and device that actually ran."""
    t = cfg.train
    return {"steps": steps, "images": steps * t.batch_size * processes, "batch_size": t.batch_size * processes,
            "lr": t.lr, "lr_scheduler": t.lr_scheduler, "timestep_sampling": t.timestep_sampling,
            "min_snr_gamma": t.min_snr_gamma, "foreground_weight": t.foreground_weight, "precision": precision,
            "device": device, "minutes": minutes, "img_per_s": img_per_s, "init_from": t.init_from,
            "profile": cfg.profile, "recipe": recipe, "date": date}


def describe_stage(stage: dict) -> str:
    """One line of a stage: time and machine, steps and images, batch, LR, loss weights, precision."""
    def num(key):
        v = stage.get(key)
        return "?" if v is None else f"{v:,}".replace(",", " ") if isinstance(v, int) else f"{v:g}"
    weights = [f"min-SNR-{stage['min_snr_gamma']:g}" if stage.get("min_snr_gamma") else "",
               f"{stage.get('timestep_sampling', 'uniform')} t",
               f"object pixels weighed {1 + stage['foreground_weight']:g}x" if stage.get("foreground_weight") else ""]
    speed = f", {stage['img_per_s']:g} img/s" if stage.get("img_per_s") else ""
    return (f"{num('minutes')} min on {stage.get('device', '?')}: {num('steps')} steps, {num('images')} images at "
            f"batch {num('batch_size')}, lr {num('lr')} ({stage.get('lr_scheduler', '?')}), "
            f"{', '.join(w for w in weights if w)}, {stage.get('precision', '?')}{speed}"
            + (f"; from {stage['init_from']}" if stage.get("init_from") else ""))


# ---------------------------------------------------------------- scores.json
SCORES_SHAPE = ('{"splits": [...], "figures": {name: {"label": ..., "values": {split: number or [a, b]}}}, '
                '"provenance": {"seeds", "images", "judges", "machine", "command", ...}}')


def read_scores(path: str | os.PathLike) -> dict:
    """A model's scores.json (SCORES_SHAPE): its measured figures and how they were measured."""
    try:
        scores = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); expected {SCORES_SHAPE}") from None
    if not (isinstance(scores, dict) and isinstance(scores.get("splits"), list)
            and isinstance(scores.get("figures"), dict) and isinstance(scores.get("provenance"), dict)):
        raise CheckpointError(f"{path}: expected {SCORES_SHAPE}")
    return scores


def scores_provenance(scores: dict) -> str:
    """How a scores.json was measured, in one phrase: seeds, images, machine, command."""
    p = scores["provenance"]
    seeds = p.get("seeds", [])
    return (f"mean of {len(seeds)} sampling seeds ({seeds[0]}–{seeds[-1]}), {p.get('images', '?')} images, "
            f"{p.get('machine', '?')}, {p.get('date', '?')}; {p.get('command', '?')}" if seeds else
            f"{p.get('machine', '?')}; {p.get('command', '?')}")


def results_table(scores: dict) -> str:
    """The Markdown table of a scores.json's figures (README.md's "Results"): one row per metric, one column per
    split; a row's values are numbers or, for pairs such as the judges' ceilings, "a / b"."""
    splits = scores["splits"]
    lines = ["| | " + " | ".join(splits) + " |", "| --- |" + " ---: |" * len(splits)]
    for row in scores["figures"].values():
        cells = [" / ".join(f"{x:.3f}" for x in v) if isinstance(v, list) else f"{v:.3f}"
                 for v in (row["values"][s] for s in splits)]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
