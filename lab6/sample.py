"""Sampling: load a trained model, draw one 64x64 image per label set, write and score the course deliverables.

    pipe = load_pipeline("outputs/quick/train")                 # export, else EMA of the latest checkpoint
    out = sample(pipe, [["red sphere"], ["cyan cube", "gray cylinder"]], sampler="ddim", num_steps=50,
                 guidance_scale=2.0, seed=0, capture_steps=[0, 10, 20, -1])
    out.images   # (B, 3, 64, 64) in [-1, 1];  out.xt / out.x0: (S, B, 3, 64, 64) at out.timesteps

`lab6 sample --model M --labels test.json --out images` writes images/test/<i>.png, images/test_grid.png and
images/test_metrics.json (accuracy, hits, labels, sampler, steps, guidance, seed).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .checkpoints import EXPORT_DIR, EXPORT_STEP_FILE, build_pipeline, latest_checkpoint, load_run_config
from .config import SAMPLERS
from .data import to_uint8
from .devices import resolve_device
from .errors import CheckpointError, ConfigError, first_line
from .evaluator import get_evaluator
from .io import atomic_dir, ensure_writable_dir, save_image, write_json
from .model import ConditionalUNet
from .pipeline import ConditionalDDPMPipeline, ConditionalDDPMPipelineOutput, as_multi_hot
from .plots import make_grid
from .schedules import make_scheduler, sampler_name

# Sampling precisions: the network in the weights' dtype, or under bf16 autocast (1.4x faster on a CPU with
# avx512_bf16, the images within a mean 0.005 of fp32's: benchmarks/LOG.md, "Chunk 7"; slower where bf16 is emulated).
PRECISIONS = (None, "fp32", "bf16")


def _is_pipeline(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def _pipeline_from_checkpoint(ckpt: Path) -> ConditionalDDPMPipeline:
    """A pipeline with the EMA weights of a checkpoint-<step>/ folder and the run's default sampler."""
    if not (ckpt / "ema" / "config.json").is_file():
        raise CheckpointError(f"{ckpt}: no ema/ weights in this checkpoint")
    cfg = load_run_config(ckpt)
    unet = ConditionalUNet.from_pretrained(ckpt / "ema")
    return build_pipeline(unet, cfg)


def _export_behind(run: Path) -> tuple[int, Path] | None:
    """(export step, newest checkpoint) when a run's export is not of its newest complete checkpoint, else None
    (also for exports that predate the step record, such as pretrained/quick-multihot)."""
    try:
        step = int(json.loads((run / EXPORT_DIR / EXPORT_STEP_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    latest = latest_checkpoint(run, warn=False)
    if latest is None or latest.name == f"checkpoint-{step}":
        return None
    return step, latest


def resolve_model(model: str | os.PathLike) -> tuple[str, Path]:
    """('pipeline' | 'checkpoint', path) for a save_pretrained folder, a run folder or a checkpoint folder."""
    p = Path(model)
    if not p.exists():
        raise CheckpointError(f"{p}: model folder not found; pass a training output folder or a "
                              f"save_pretrained pipeline folder")
    if _is_pipeline(p):
        return "pipeline", p
    if _is_pipeline(p / EXPORT_DIR):
        stale = _export_behind(p)
        if stale is None:
            return "pipeline", p / EXPORT_DIR
        print(f"warning: {p / EXPORT_DIR} is from step {stale[0]}, but the run's newest checkpoint is "
              f"{stale[1].name} (a run stopped before its export, or resumed from an earlier step); using "
              f"{stale[1].name}", file=sys.stderr)
        return "checkpoint", stale[1]
    if (p / "state.json").is_file():
        return "checkpoint", p
    latest = latest_checkpoint(p)
    if latest is not None:
        return "checkpoint", latest
    raise CheckpointError(f"{p}: holds no pipeline (model_index.json), {EXPORT_DIR}/ export or checkpoint-<step>/; "
                          f"train one with `lab6 train --out {p}`")


def load_pipeline(model: str | os.PathLike, device: str | None = None) -> ConditionalDDPMPipeline:
    """Load a model for sampling: a save_pretrained folder, a run's export, else the EMA of its latest checkpoint."""
    kind, path = resolve_model(model)
    try:
        if kind == "pipeline":
            pipe = ConditionalDDPMPipeline.from_pretrained(path)
        else:
            pipe = _pipeline_from_checkpoint(path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a cut or foreign folder fails in many ways inside diffusers
        raise CheckpointError(f"{path}: cannot load the model ({first_line(e)}); is it a folder written by "
                              f"`lab6 train`?") from None
    if not isinstance(pipe.unet, ConditionalUNet):
        raise CheckpointError(f"{path}: holds a {type(pipe.unet).__name__}, not lab6's label-conditioned "
                              f"ConditionalUNet; pass a folder written by `lab6 train`")
    bad = [name for name, w in pipe.unet.state_dict().items() if w.is_floating_point() and not torch.isfinite(w).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensors hold NaN or inf (first: {bad[0]}); the training "
                              f"that wrote it diverged: use an earlier checkpoint-<step>/ or retrain with a lower lr")
    pipe.unet.eval()
    return pipe.to(resolve_device(device, "device"))


def set_sampler(pipe: ConditionalDDPMPipeline, sampler: str | None) -> ConditionalDDPMPipeline:
    """Swap pipe.scheduler for 'ddpm', 'ddim' or 'dpm' with the same noise schedule (None: keep it)."""
    if sampler is None or sampler == sampler_name(pipe.scheduler):
        return pipe
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler: unknown {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    spacing = pipe.scheduler.config.get("timestep_spacing", "leading")
    pipe.scheduler = make_scheduler(pipe.scheduler, sampler, spacing)
    return pipe


def generators(seed: int, n: int) -> list[torch.Generator]:
    """One CPU generator per image (seed + i), so image i does not depend on the batch size or the set size."""
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def precision_context(pipe: ConditionalDDPMPipeline, precision: str | None):
    """"bf16": the network under torch.autocast on the pipeline's device (x_t and the sampler's arithmetic stay
    fp32); None / "fp32": the weights' own dtype."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected fp32 or bf16 (or None: the weights' dtype), got {precision!r}")
    if precision == "bf16":
        return torch.autocast(pipe.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sample(pipe: ConditionalDDPMPipeline, labels, sampler: str | None = None, num_steps: int | None = None,
           guidance_scale: float | None = None, seed: int = 0, batch_size: int | None = 64,
           capture_steps: Sequence[int] | None = None, eta: float | None = None,
           progress: bool = False, object_guidance_scale: float | None = None,
           shift_patches: bool | None = None, precision: str | None = None) -> ConditionalDDPMPipelineOutput:
    """Images (B, 3, 64, 64) in [-1, 1] for label sets, seeded per image; defaults: the model's saved ones."""
    set_sampler(pipe, sampler)
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    n = len(as_multi_hot(labels))
    with precision_context(pipe, precision):
        return pipe(labels=labels, num_inference_steps=num_steps, guidance_scale=guidance_scale,
                    generator=generators(seed, n), eta=eta, batch_size=batch_size, capture_steps=capture_steps,
                    output_type="pt", object_guidance_scale=object_guidance_scale, shift_patches=shift_patches)


def score(images: torch.Tensor, labels, evaluator=None, device: str | None = None,
          data_root: str | os.PathLike | None = None) -> tuple[float, int, int] | None:
    """(accuracy, hits, labels) of the course evaluator, or None (with a warning) when there is no evaluator."""
    ev = get_evaluator(evaluator, data_root, device)
    if ev is None:
        return None
    hits, total = ev.score(images, labels)
    return hits / total, hits, total


def write_deliverables(images: torch.Tensor, out: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """<out>/<name>/<i>.png (64x64, replaced as a whole) and <out>/<name>_grid.png (8 per row)."""
    out = ensure_writable_dir(out)
    folder = out / name
    with atomic_dir(folder) as tmp:
        for i, a in enumerate(to_uint8(images)):
            Image.fromarray(a).save(tmp / f"{i}.png")
    grid = out / f"{name}_grid.png"
    save_image(grid, make_grid(images, nrow=8))
    return folder, grid


def sample_split(pipe: ConditionalDDPMPipeline, label_sets, out: str | os.PathLike, name: str, evaluator=None,
                 seed: int = 0, sampler: str | None = None, num_steps: int | None = None,
                 guidance_scale: float | None = None, batch_size: int | None = 64, progress: bool = False,
                 data_root: str | os.PathLike | None = None, device: str | None = None,
                 object_guidance_scale: float | None = None, shift_patches: bool | None = None, **info) -> dict:
    """Sample a label file's sets, write <out>/<name>/<i>.png, <out>/<name>_grid.png, <out>/<name>_metrics.json."""
    set_sampler(pipe, sampler)
    steps, guidance, _ = pipe.resolve_settings(num_steps, guidance_scale)  # what the metrics record
    per_object = pipe.resolve_object_scale(object_guidance_scale)
    shift = pipe.resolve_shift_patches(shift_patches)
    t0 = time.monotonic()
    result = sample(pipe, label_sets, num_steps=steps, guidance_scale=guidance, seed=seed,
                    batch_size=batch_size, progress=progress, object_guidance_scale=per_object, shift_patches=shift)
    seconds = time.monotonic() - t0
    scored = score(result.images, label_sets, evaluator, device, data_root)  # first: a refusal writes nothing
    write_deliverables(result.images, out, name)
    metrics = {"accuracy": None if scored is None else round(scored[0], 6),
               "hits": None if scored is None else scored[1],
               "labels": None if scored is None else scored[2],
               "images": len(result.images), "sampler": sampler_name(pipe.scheduler), "steps": steps,
               "guidance": guidance, "object_guidance": per_object, "shift_patches": shift, "seed": seed,
               "seconds": round(seconds, 2), **info}
    write_json(Path(out) / f"{name}_metrics.json", metrics)
    return metrics
