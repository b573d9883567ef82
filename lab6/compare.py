"""Measured comparisons behind notebooks 04-05 and the benchmarks: samplers, guidance scales, seeds, ablations."""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .data import from_uint8
from .evaluator import Evaluator
from .fidelity import fid_kid
from .sample import sample
from .synth import render_labels

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


def fidelity(pipe, splits: dict[str, list], evaluator: Evaluator, checker, seeds: Sequence[int] = (0, 1, 2),
             render_seed: int = 7000, **kwargs) -> dict:
    """Every split sampled once per seed; per split top-k (mean, std over seeds), exact-scene accuracy and the
    shares of images with a duplicated / unrequested / missing object; pooled FID and KID against fresh renders
    of the same label sets, with their floor (the same label sets rendered with another seed)."""
    images, sets, per_split, t0 = [], [], {}, time.perf_counter()
    for split, label_sets in splits.items():
        accs, reads = [], []
        for s in seeds:
            x = sample(pipe, label_sets, seed=s, **kwargs).images  # (B, 3, 64, 64)
            accs.append(evaluator.accuracy(x, label_sets))
            reads.append(checker.report(x, label_sets))
            images.append(x)
            sets += label_sets
        acc = torch.tensor(accs)
        per_split[split] = {"top-k": float(acc.mean()), "std": float(acc.std()) if len(acc) > 1 else 0.0,
                            "min": float(acc.min()), "max": float(acc.max()),
                            **{k: sum(r[k] for r in reads) / len(reads)
                               for k in ("exact", "duplicate", "unrequested", "missing")}}
    seconds = time.perf_counter() - t0
    fake = torch.cat(images)
    real = from_uint8(render_labels(sets, seed=render_seed))
    floor = from_uint8(render_labels(sets, seed=render_seed + 1000))
    return {"splits": per_split, **fid_kid(real, fake, evaluator),
            "floor": {k: v for k, v in fid_kid(real, floor, evaluator).items() if k in ("fid", "kid")},
            "seconds_per_32": seconds / (len(sets) / 32), "seeds": list(seeds)}
