"""Checkpoints and the export of a training run: the on-disk format in one place.

A run folder (train.output_dir) holds, besides config.yaml and metrics.jsonl:

    checkpoint-{step}/                   one per train.checkpoint_every steps, the newest checkpoints_total_limit kept
        model/config.json                the UNet (ConditionalUNet.save_pretrained)
        model/diffusion_pytorch_model.safetensors
        ema/config.json                  the same UNet holding the EMA weights
        ema/diffusion_pytorch_model.safetensors
        optimizer.pt                     AdamW's state_dict
        lr_scheduler.pt                  the LR scheduler's state_dict
        random_states_{rank}.pt          per process: the noise generator and torch / numpy / python / cuda RNG states
                                         (tensors, numbers and lists only: every .pt is read with weights_only=True)
        state.json                       {"step", "ema" (EMA scalars), "num_processes", "config" (Config.to_dict),
                                          "files" ({path: bytes} of every file above)}; written last
    pipeline/                            the export: ConditionalDDPMPipeline.save_pretrained with the EMA weights and
                                         the profile's default sampler, its code (lab6_pipeline.py, unet/lab6_model.py:
                                         plain diffusers loads it), lab6_config.yaml, lab6_step.json, stages.json
                                         (lab6.records: the stages of its init_from model, then this run's) and
                                         README.md, the model card

A checkpoint is written into .checkpoint-{step}.tmp/ and renamed into place, so a kill leaves either the old
folder or the new one; a checkpoint whose files are missing or shorter than state.json lists is incomplete and
skipped by resume="latest". `repair_partial_saves` cleans up after a save that was interrupted.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pickle
import random
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .card import CARD_FILE, model_card, run_scores
from .config import Config, config_from_dict, read_yaml, to_yaml
from .errors import CheckpointError, ConfigError, first_line
from .io import atomic_dir, replace_dir, write_json, write_text
from .model import ConditionalUNet
from .pipeline import ConditionalDDPMPipeline
from .records import STAGES_FILE, read_stages, run_speed, training_stage
from .schedules import make_scheduler

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
EXPORT_DIR = "pipeline"
EXPORT_STEP_FILE = "lab6_step.json"
# Files of every checkpoint-<step>/ (state.json, written last, also lists each file's size).
CHECKPOINT_FILES = ("model/config.json", "model/diffusion_pytorch_model.safetensors", "ema/config.json",
                    "ema/diffusion_pytorch_model.safetensors", "optimizer.pt", "lr_scheduler.pt")


@dataclasses.dataclass
class TrainState:
    """What a checkpoint saves and restores: the model, its EMA, the optimizer, the LR schedule and the noise RNG."""
    cfg: Config
    out: Path
    accelerator: object
    model: torch.nn.Module
    ema: object
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    generator: torch.Generator
    recipe: str | None = None  # the --config file the run was started with, for stages.json
    keep_step: int | None = None  # the checkpoint before a loss spike: never pruned while the spike lasts


# ---------------------------------------------------------------- finding checkpoints
def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint-<step>/ in folder, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def checkpoint_problem(ckpt: str | os.PathLike) -> str | None:
    """Why checkpoint folder `ckpt` cannot be resumed (a missing or truncated file), or None when it is complete."""
    ckpt = Path(ckpt)
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except FileNotFoundError:
        return "no state.json"
    except (OSError, ValueError) as e:
        return f"state.json unreadable ({e})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return "state.json holds no step"
    files = state.get("files") or dict.fromkeys(CHECKPOINT_FILES)  # checkpoints from before the size list
    if not isinstance(files, dict):
        return "state.json's file list is malformed"
    for rel, size in files.items():
        f = ckpt / rel
        try:
            have = f.stat().st_size if f.is_file() else None
        except OSError:  # removed while we looked
            have = None
        if have is None:
            return f"{rel} is missing"
        if size is not None and have != size:
            return f"{rel} has {have} bytes, {size} were written"
    return None


def latest_checkpoint(folder: str | os.PathLike, warn: bool = True) -> Path | None:
    """The newest complete checkpoint-<step>/ in folder, or None; incomplete ones are skipped with a warning."""
    for _, p in reversed(list_checkpoints(folder)):
        problem = checkpoint_problem(p)
        if problem is None:
            return p
        if warn:
            print(f"warning: skipping {p}: incomplete ({problem}); using an earlier checkpoint", file=sys.stderr)
    return None


def checkpoint_dirs(folder: Path) -> list[Path]:
    """Every checkpoint-<step>/ folder, complete or not, oldest first."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if CHECKPOINT_RE.match(p.name) and p.is_dir()),
                  key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def set_aside_later_checkpoints(out: Path, step: int) -> None:
    """Move the checkpoints after `step` to <out>/abandoned/: a run resumed from an earlier checkpoint (say, before
    a divergence) would otherwise keep them as its newest, and a later `resume="latest"` would go back to them."""
    later = [p for p in checkpoint_dirs(out) if int(CHECKPOINT_RE.match(p.name).group(1)) > step]
    if not later:
        return
    aside = out / "abandoned"
    aside.mkdir(exist_ok=True)
    for p in later:
        replace_dir(p, aside / p.name)
    print(f"warning: moved {', '.join(p.name for p in later)} (after step {step}, where this run resumes) to "
          f"{aside}/", file=sys.stderr)


def repair_partial_saves(out: Path) -> None:
    """Clean up after a hard kill during a save: restore a replaced checkpoint, delete temporary folders."""
    if not out.is_dir():
        return
    for old in sorted(out.glob(".checkpoint-*.old")):
        final = out / old.name[1:-len(".old")]
        if not final.exists() and checkpoint_problem(old) is None:  # killed between the two renames
            print(f"warning: restoring {final.name} from {old.name} (a save was interrupted)", file=sys.stderr)
            os.replace(old, final)
    export, old_export = out / EXPORT_DIR, out / f".{EXPORT_DIR}.old"
    if old_export.is_dir() and not export.exists():
        print(f"warning: restoring {EXPORT_DIR}/ from {old_export.name} (an export was interrupted)", file=sys.stderr)
        os.replace(old_export, export)
    for tmp in [*sorted(out.glob(".checkpoint-*.tmp")), *sorted(out.glob(".checkpoint-*.old")),
                *sorted(out.glob(".checkpoint-*.del")),
                *sorted(out.glob(f".{EXPORT_DIR}.*.tmp")), *sorted(out.glob(f".{EXPORT_DIR}.old"))]:
        print(f"warning: removing {tmp.name}, left by a save that was interrupted", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_resume(resume: str | None, out: Path, warn: bool = True) -> Path | None:
    """'latest' -> newest complete checkpoint in out (None if there is none); a path -> that checkpoint folder."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(out, warn)
    p = Path(resume)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found; pass --resume latest or a checkpoint-<step>/ folder")
    if not (p / "state.json").is_file():
        latest = latest_checkpoint(p, warn)
        if latest is None:
            raise CheckpointError(f"{p}: not a checkpoint-<step>/ folder nor a run folder holding a complete one")
        return latest
    problem = checkpoint_problem(p)
    if problem is not None:
        raise CheckpointError(f"{p}: incomplete or corrupt checkpoint ({problem}); resume from an earlier one")
    return p


# ---------------------------------------------------------------- saving
def _numpy_state() -> tuple:
    """numpy's global RNG state as plain numbers and a list (np.random.set_state takes it back as is)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, keys.tolist(), int(pos), int(has_gauss), float(gauss)


def _rng_state(generator: torch.Generator) -> dict:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state(), "numpy": _numpy_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _ema_scalars(ema) -> dict:
    return {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}


@contextmanager
def ema_weights(model, ema):
    """Temporarily swap the EMA weights into `model` (store / copy_to / restore)."""
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())


def save_checkpoint(run: TrainState, step: int) -> Path:
    """Write checkpoint-<step>/ atomically (all processes call this) and prune old ones; returns its path."""
    acc, out = run.accelerator, run.out
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    model = acc.unwrap_model(run.model)
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp / "model")
        with ema_weights(model, run.ema):
            model.save_pretrained(tmp / "ema")
        torch.save(run.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(run.lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
    acc.wait_for_everyone()
    torch.save(_rng_state(run.generator), tmp / f"random_states_{acc.process_index}.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        files = {f.relative_to(tmp).as_posix(): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        write_json(tmp / "state.json", {"step": step, "ema": _ema_scalars(run.ema), "num_processes": acc.num_processes,
                                        "config": run.cfg.to_dict(), "files": files})  # last: all else is written
        replace_dir(tmp, final)
        limit = run.cfg.train.checkpoints_total_limit
        if limit:  # incomplete ones (a cut copy) do not count: the newest complete ones are kept
            complete = [p for _, p in list_checkpoints(out) if checkpoint_problem(p) is None]
            for p in [p for p in complete[:-limit] if p.name != f"checkpoint-{run.keep_step}"]:
                gone = out / f".{p.name}.del"  # renamed first: a kill during rmtree leaves no half checkpoint
                os.replace(p, gone)
                shutil.rmtree(gone, ignore_errors=True)
    acc.wait_for_everyone()
    return final


# ---------------------------------------------------------------- loading
def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    f = folder / "diffusion_pytorch_model.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{folder}: no diffusion_pytorch_model.safetensors (incomplete checkpoint?)")
    try:
        return load_file(str(f))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a cut file
        raise CheckpointError(f"{f}: truncated or not a safetensors file ({first_line(e)})") from None


def _numpy_arrays() -> list:
    """What the safe unpickler needs to rebuild the uint32 array in the RNG state of an older checkpoint."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    return [core._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def _torch_load(f: Path, **kwargs):
    """torch.load with weights_only=True (tensors, numbers, lists; never code) whose failures name the file."""
    try:
        with torch.serialization.safe_globals(_numpy_arrays()):
            return torch.load(f, weights_only=True, **kwargs)
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing (incomplete checkpoint?)") from None
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"{f}: truncated or not a PyTorch file ({first_line(e)})") from None
        raise CheckpointError(f"{f}: holds pickled Python objects, which lab6 does not load (they could run code); "
                              f"resume from a checkpoint lab6 wrote, or start a new run from its weights with "
                              f"--init-from {f.parent / 'ema'}") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(f"{f}: truncated or not a PyTorch file ({first_line(e)})") from None


def read_state(ckpt: Path) -> dict:
    """state.json of a checkpoint folder."""
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: not a checkpoint folder (no state.json)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{ckpt}/state.json: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{ckpt}/state.json: corrupt ({e.msg})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{ckpt}/state.json: expected {{\"step\": N, ...}} as lab6 train writes it")
    return state


def check_compatible(ckpt: Path, cfg: Config) -> None:
    """Raise CheckpointError when a checkpoint's model or noise schedule differs from cfg's (before any loading)."""
    saved = read_state(ckpt).get("config")
    if not isinstance(saved, dict):
        return  # no saved config: the weights' shapes are still checked when loading
    now = cfg.to_dict()
    diffs = [f"{sec}.{key}" for sec in ("model", "schedule") for key, value in now[sec].items()
             if isinstance(saved.get(sec), dict) and saved[sec].get(key, value) != value]
    if diffs:
        was = saved.get("profile", "?")
        raise CheckpointError(f"{ckpt}: trained with another {', '.join(diffs[:4])} (profile {was!r}, now "
                              f"{cfg.profile!r}); resume with --profile {was} and the --config it was trained "
                              f"with, or start a new run in another --out")


def restore_checkpoint(run: TrainState, ckpt: Path) -> int:
    """Restore model, EMA, optimizer, LR scheduler and this process's RNG states; returns the step."""
    state = read_state(ckpt)
    acc, dev = run.accelerator, run.accelerator.device
    model = acc.unwrap_model(run.model)
    try:
        model.load_state_dict(_load_weights(ckpt / "model"))
        ema_sd = _load_weights(ckpt / "ema")
        shadow = [ema_sd[name].to(dev) for name, _ in model.named_parameters()]
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{ckpt}: weights do not match this profile's model "
                              f"({str(e).splitlines()[0][:160]}); resume with the same --profile/--config") from None
    run.ema.load_state_dict({**state["ema"], "shadow_params": shadow})
    t = run.cfg.train
    run.ema.decay, run.ema.use_ema_warmup = t.ema_decay, t.ema_warmup  # the config's, not the checkpoint's
    optimizer = _torch_load(ckpt / "optimizer.pt", map_location=dev)
    lr_scheduler = _torch_load(ckpt / "lr_scheduler.pt")
    try:
        run.optimizer.load_state_dict(optimizer)
        run.lr_scheduler.load_state_dict(lr_scheduler)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt}: optimizer state does not match this model ({first_line(e)})") from None
    _resume_lr(run)
    saved_init = state.get("config", {}).get("train", {}).get("init_from")
    if t.init_from is None and saved_init:  # where the weights first came from: their stages stay in stages.json
        t.init_from = saved_init
    changed = changed_settings(state.get("config", {}).get("train", {}), run.cfg.to_dict()["train"])
    if changed and acc.is_main_process:
        print(f"resuming {ckpt.name} with changed settings: {', '.join(changed)}", flush=True)
    rng = ckpt / f"random_states_{acc.process_index}.pt"
    if rng.is_file():
        _set_rng_state(_torch_load(rng), run.generator)
    else:
        print(f"warning: {rng} missing (different number of processes?); this process's noise is reseeded",
              file=sys.stderr)
    if state.get("num_processes", 1) != acc.num_processes:
        print(f"warning: {ckpt} was written by {state.get('num_processes')} process(es), resuming with "
              f"{acc.num_processes}: the batches differ from an uninterrupted run", file=sys.stderr)
    return int(state["step"])


def changed_settings(old: dict, new: dict) -> list[str]:
    """'train.<name> <old> -> <new>' for each train setting a resumed run changes (its output folder aside)."""
    return [f"train.{k} {old[k]} -> {v}" for k, v in new.items()
            if k in old and k != "output_dir" and old[k] != v]


def _resume_lr(run: TrainState) -> None:
    """Set the LR of the resumed step from the config's train.lr and schedule: the restored LR scheduler and
    optimizer would otherwise keep the checkpoint's peak LR (resuming with a lower LR is the remedy for a
    diverging run) and, for one step, the old schedule's value."""
    sched, lr = run.lr_scheduler, run.cfg.train.lr
    sched.base_lrs = [lr] * len(sched.base_lrs)
    for g, factor in zip(sched.optimizer.param_groups, sched.lr_lambdas):
        g["initial_lr"], g["lr"] = lr, lr * factor(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]  # what get_last_lr() reports until the next step


# ---------------------------------------------------------------- configs and weights of earlier runs
def init_weights(model: ConditionalUNet, folder: Path) -> None:
    """Start from the weights of a model folder (an export or its unet/) with the same architecture."""
    src = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    if not (src / "config.json").is_file():
        raise ConfigError(f"train.init_from: {folder}: expected a model folder holding unet/config.json or "
                          f"config.json (a `lab6 train` export such as pretrained/quick)")
    other = ConditionalUNet.from_pretrained(src)
    mine, theirs = ({k: json.dumps(v) for k, v in c.items() if not k.startswith("_")} for c in (model.config, other.config))
    diff = sorted(k for k in mine if theirs.get(k) != mine[k])
    # zero-initialised additions a plain model can be grafted onto, and the plain model's value of each
    plain = {"object_tokens": None, "pixel_head": None, "multi_hot": True, "object_count": False,
             "tokens_every_level": False}
    grafting = bool(diff) and all(k in plain and getattr(other.config, k, plain[k]) == plain[k] for k in diff)
    if diff and not grafting:
        raise ConfigError(f"train.init_from: {src} holds another architecture (differs in {', '.join(diff)}); "
                          f"use the same model settings as the run that wrote it (or add model.object_tokens, "
                          f"model.pixel_head, model.object_count or model.tokens_every_level to it, or set "
                          f"model.multi_hot false)")
    # a token or pixel-head model starts as the plain model: its new parts add nothing until trained (a tokens-only
    # model, multi_hot false, starts as the plain model's unconditional net and learns the objects from the tokens)
    model.load_state_dict(other.state_dict(), strict=not grafting)


def load_run_config(folder: str | os.PathLike) -> Config:
    """The config saved with a run folder, checkpoint or export."""
    folder = Path(folder)
    for name in ("config.yaml", "lab6_config.yaml"):
        if (folder / name).is_file():
            data = read_yaml(folder / name)
            try:
                return config_from_dict(data)
            except ConfigError as e:
                raise CheckpointError(f"{folder / name}: {e}") from None
    if (folder / "state.json").is_file():
        return config_from_dict(read_state(folder)["config"])
    raise CheckpointError(f"{folder}: no config.yaml, lab6_config.yaml or state.json")


# ---------------------------------------------------------------- export
def build_pipeline(model: ConditionalUNet, cfg: Config):
    """ConditionalDDPMPipeline with the profile's default sampler, steps, guidance and patch shifting."""
    s = cfg.sample
    scheduler = make_scheduler(cfg.schedule, s.sampler, s.timestep_spacing)
    return ConditionalDDPMPipeline(model, scheduler, default_num_inference_steps=s.num_steps,
                                   default_guidance_scale=s.guidance_scale, default_eta=s.eta,
                                   default_shift_patches=s.shift_patches)


def _device_name(run: TrainState) -> str:
    """The machine that trained: '1 x <GPU name>' or 'CPU, <threads> threads'."""
    dev, n = run.accelerator.device, run.accelerator.num_processes
    if dev.type == "cuda":
        return f"{n} x {torch.cuda.get_device_name(dev)}"
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread{'s' if threads > 1 else ''}" + (f" x {n} processes" if n > 1 else "")


def run_stages(run: TrainState, step: int) -> list[dict]:
    """stages.json of the export: the stages of the model it started from, then this run's."""
    try:
        earlier = read_stages(run.cfg.train.init_from)
    except CheckpointError as e:
        print(f"warning: {e}; its earlier stages are left out of {STAGES_FILE}", file=sys.stderr)
        earlier = []
    acc = run.accelerator
    minutes, img_per_s = run_speed(run.out / "metrics.jsonl")
    precision = acc.mixed_precision if acc.mixed_precision != "no" else "fp32"  # bf16 runs on CUDA only
    return [*earlier, training_stage(run.cfg, step, acc.num_processes, precision, _device_name(run), minutes,
                                     img_per_s, run.recipe, datetime.date.today().isoformat())]


def export_pipeline(run: TrainState, folder: Path, step: int) -> Path:
    """save_pretrained of the pipeline with the EMA weights (main process), atomically; records its step and
    its training stages."""
    model = run.accelerator.unwrap_model(run.model)
    if run.accelerator.is_main_process:
        with ema_weights(model, run.ema), atomic_dir(folder) as tmp:
            build_pipeline(model, run.cfg).save_pretrained(tmp)  # with its code: plain diffusers loads it
            if run.cfg.train.export_dtype == "float16":
                weights = tmp / "unet" / "diffusion_pytorch_model.safetensors"
                save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()},
                          str(weights), metadata={"format": "pt"})
            write_text(tmp / "lab6_config.yaml", to_yaml(run.cfg))
            write_json(tmp / EXPORT_STEP_FILE, {"step": step})
            stages = run_stages(run, step)
            write_json(tmp / STAGES_FILE, stages)
            scores, judges = run_scores(run.cfg, run.out / "metrics.jsonl") or (None, None)
            write_text(tmp / CARD_FILE, model_card(run.cfg, step, scores, judges, stages=stages))
    run.accelerator.wait_for_everyone()
    return folder
