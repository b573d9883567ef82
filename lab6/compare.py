"""Measured comparisons behind notebooks 04-05 and the benchmarks: samplers, guidance scales, seeds, ablations."""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .evaluator import Evaluator
from .sample import sample

# (name, sampler, steps): the sampler comparison the course report asks for.
SAMPLER_SETTINGS = (
    ("DDPM-1000", "ddpm", 1000),
    ("DDIM-50", "ddim", 50),
    ("DDIM-25", "ddim", 25),
    ("DPM++-25", "dpm", 25),
    ("DPM++-20", "dpm", 20),
    ("DPM++-10", "dpm", 10),
    ("SDE-DPM++-25", "dpm-sde", 25),
)


def timed_accuracy(pipe, label_sets, evaluator: Evaluator, seed: int = 0, **kwargs) -> dict:
    """Sample once per label set, score with the evaluator; {accuracy, hits, labels, seconds, unrequested}
    (unrequested: the share of images showing an object that no label asked for)."""
    t0 = time.perf_counter()
    out = sample(pipe, label_sets, seed=seed, **kwargs)
    seconds = time.perf_counter() - t0
    return {**evaluator.scores(out.images, label_sets), "seconds": round(seconds, 2)}


def sampler_comparison(pipe, label_sets, evaluator: Evaluator, guidance_scale: float | None = None,
                       settings: Sequence[tuple[str, str, int]] = SAMPLER_SETTINGS, seed: int = 0) -> dict:
    """{setting name: {sampler, steps, accuracy, seconds, ...}} for each (name, sampler, steps)."""
    default_sampler = type(pipe.scheduler)
    rows = {}
    for name, sampler, steps in settings:
        rows[name] = {"sampler": sampler, "steps": steps,
                      **timed_accuracy(pipe, label_sets, evaluator, seed, sampler=sampler, num_steps=steps,
                                       guidance_scale=guidance_scale)}
    pipe.scheduler = default_sampler.from_config(pipe.scheduler.config)
    return rows


def guidance_sweep(pipe, label_sets, evaluator: Evaluator, scales: Sequence[float] = (1.0, 2.0, 3.0, 5.0),
                   seed: int = 0, **kwargs) -> dict:
    """{scale: {accuracy, seconds, ...}} with the pipeline's default sampler and steps."""
    return {float(w): timed_accuracy(pipe, label_sets, evaluator, seed, guidance_scale=w, **kwargs) for w in scales}


def seed_spread(pipe, label_sets, evaluator: Evaluator, seeds: Sequence[int] = (0, 1, 2), **kwargs) -> dict:
    """Accuracy over several sampling seeds: {mean, std, min, max, per_seed}."""
    accs = torch.tensor([timed_accuracy(pipe, label_sets, evaluator, s, **kwargs)["accuracy"] for s in seeds])
    return {"mean": float(accs.mean()), "std": float(accs.std()) if len(accs) > 1 else 0.0,
            "min": float(accs.min()), "max": float(accs.max()), "per_seed": [round(float(a), 4) for a in accs]}


def no_label_accuracy(pipe, label_sets, evaluator: Evaluator, seed: int = 0, **kwargs) -> dict:
    """Ablation: sample with the all-zero label (no condition) and score against the wanted labels."""
    blank = torch.zeros(len(label_sets), 24)
    t0 = time.perf_counter()
    out = sample(pipe, blank, seed=seed, guidance_scale=1.0, **kwargs)
    hits, total = evaluator.score(out.images, label_sets)
    return {"accuracy": hits / total, "hits": hits, "labels": total,
            "seconds": round(time.perf_counter() - t0, 2)}
