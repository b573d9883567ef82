"""The record that lives with a model folder: `stages.json` (how it was trained, every stage), `scores.json`
(what it scored, read by which judges, on which machine, with which command) and, beside the shipped model only,
`methods.json` (the training runs the project compared, each with its figures, source and why; its `format`
field says its shape).

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
from .errors import CheckpointError, DataError

STAGES_FILE = "stages.json"
SCORES_FILE = "scores.json"
METHODS_FILE = "methods.json"
SHIPPED_METHODS = Path(__file__).resolve().parents[1] / "pretrained" / "quick" / METHODS_FILE


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
    tc = cfg.train
    return {"steps": steps, "images": steps * tc.batch_size * processes, "batch_size": tc.batch_size * processes,
            "lr": tc.lr, "lr_scheduler": tc.lr_scheduler, "timestep_sampling": tc.timestep_sampling,
            "min_snr_gamma": tc.min_snr_gamma, "foreground_weight": tc.foreground_weight, "precision": precision,
            "device": device, "minutes": minutes, "img_per_s": img_per_s, "init_from": tc.init_from,
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


# ---------------------------------------------------------------- methods.json
METHODS_SHAPE = ('{"splits": [...], "comparisons": [{"title", "measured", "source", "why", "rows": [{"method", '
                 '"changed", "top_k"/"exact"/"duplicate": {split: figure}, "fid", "also", "note"}]}], '
                 '"screening": {the same shape, rows may be []}}; its "format" field tells the rest')
METHOD_SPLIT_FIGURES = ("top_k", "exact", "duplicate")
COMPARISON_TEXT = ("title", "measured", "source", "why")


def _is_figure(v) -> bool:
    """A number, a string holding one, or (a screen's) [mean, min, max] of those."""
    if isinstance(v, list):
        return len(v) == 3 and all(_is_figure(x) for x in v)
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _comparison_problem(c, splits: list, empty_ok: bool) -> str | None:
    """What is wrong with one comparison of methods.json, None when nothing is."""
    if not isinstance(c, dict):
        return "is not an object"
    missing = [k for k in COMPARISON_TEXT if not isinstance(c.get(k), str)]
    if missing:
        return f"has no text {', '.join(missing)}"
    rows = c.get("rows")
    if not isinstance(rows, list) or not (rows or empty_ok):
        return "has no rows"
    names = set()
    for i, r in enumerate(rows, 1):
        where = f"row {i}"
        if not isinstance(r, dict) or not isinstance(r.get("method"), str) or not isinstance(r.get("changed"), str):
            return f"{where} needs text method and changed"
        if r["method"] in names:
            return f"{where} repeats the method {r['method']!r}"
        names.add(r["method"])
        for key in METHOD_SPLIT_FIGURES:
            v = r.get(key)
            if v is None:
                continue
            if not isinstance(v, dict) or any(s not in splits for s in v):
                return f"{where} ({r['method']}): {key} must map the splits {splits} to figures"
            if not all(x is None or _is_figure(x) for x in v.values()):
                return f"{where} ({r['method']}): {key} holds a value that is no figure"
        if r.get("fid") is not None and not _is_figure(r["fid"]):
            return f"{where} ({r['method']}): fid is no figure"
        for key in ("also", "note"):
            if r.get(key) is not None and not isinstance(r[key], str):
                return f"{where} ({r['method']}): {key} must be text"
    return None


def read_methods(path: str | os.PathLike = SHIPPED_METHODS) -> dict:
    """The methods compared by training runs (METHODS_SHAPE), checked; a DataError of one line naming the file and
    what is wrong with it otherwise."""
    try:
        methods = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise DataError(f"{path}: unreadable ({reason}); expected {METHODS_SHAPE}") from None
    problem = None
    if not isinstance(methods, dict):
        problem = "not a JSON object"
    elif not (isinstance(methods.get("splits"), list) and methods["splits"]
              and all(isinstance(s, str) for s in methods["splits"])):
        problem = "no list of splits"
    elif not isinstance(methods.get("comparisons"), list) or not methods["comparisons"]:
        problem = "no list of comparisons"
    else:
        blocks = [(f"comparison {i}", c, False) for i, c in enumerate(methods["comparisons"], 1)]
        if methods.get("screening") is not None:
            blocks.append(("screening", methods["screening"], True))
        for name, c, empty_ok in blocks:
            p = _comparison_problem(c, methods["splits"], empty_ok)
            if p:
                title = c.get("title") if isinstance(c, dict) else None
                problem = f"{name}" + (f" ({title})" if isinstance(title, str) else "") + f" {p}"
                break
    if problem:
        raise DataError(f"{path}: {problem}; expected {METHODS_SHAPE}")
    return methods


def method_comparisons(methods: dict) -> list[dict]:
    """The comparisons to show: every one, then the screen once it has rows."""
    screen = methods.get("screening")
    return methods["comparisons"] + ([screen] if screen and screen.get("rows") else [])
