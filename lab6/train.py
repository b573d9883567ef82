"""Training the conditional DDPM (Algorithm 1 of Ho et al. 2020) with CFG dropout, EMA and exact resume.

    from lab6.config import load_config
    from lab6.train import train
    run_dir = train(load_config("quick", output_dir="outputs/quick/train"))

The run folder holds `config.yaml`, `metrics.jsonl` (step, loss, lr, img/s; validation accuracies),
`samples/<split>-step-<step>.png` (fixed-seed validation grids), `checkpoint-<step>/` (model, EMA, optimizer,
LR scheduler, RNG states, step; written atomically, the newest `checkpoints_total_limit` kept) and the final
export `pipeline/` (ConditionalDDPMPipeline.save_pretrained with the EMA weights and the default sampler).
Training always ends with a checkpoint and the export: at max_steps, at max_minutes or on Ctrl-C / SIGTERM.
`accelerate launch --num_processes N -m lab6 train ...` trains data-parallel; batch_size is per process.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config, TrainConfig, check_device, config_from_dict, load_config, read_yaml, to_yaml
from .errors import CheckpointError, ConfigError, DataError, TrainingError
from .io import check_writable_dir, ensure_writable_dir, replace_dir, write_json, write_text
from .model import ConditionalUNet, build_model, count_parameters
from .schedules import make_scheduler, q_sample, snr, v_target

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
EXPORT_DIR = "pipeline"
# Files of every checkpoint-<step>/ (state.json, written last, also lists each file's size).
CHECKPOINT_FILES = ("model/config.json", "model/diffusion_pytorch_model.safetensors", "ema/config.json",
                    "ema/diffusion_pytorch_model.safetensors", "optimizer.pt", "lr_scheduler.pt")


# ---------------------------------------------------------------- Algorithm 1
def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weight of every timestep (Hang et al. 2023), for eps- or v-prediction: (T,)."""
    s = snr(alphas_cumprod).float()  # (T,)
    return s.clamp(max=gamma) / (s + 1 if prediction_type == "v_prediction" else s)


def diffusion_loss(model, x0: torch.Tensor, labels: torch.Tensor, alphas_cumprod: torch.Tensor,
                   generator: torch.Generator, prediction_type: str = "epsilon", cond_drop_prob: float = 0.0,
                   min_snr_gamma: float | None = None, timestep_sampling: str = "uniform",
                   pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """One Monte-Carlo estimate of the DDPM loss: t ~ U{0..T-1}, eps ~ N(0, I), ||target - f(x_t, t, y)||^2.

    Noise, timesteps and the condition dropout are drawn on the CPU from `generator` (reproducible on any device);
    dropped labels become the all-zero "no condition" vector used by classifier-free guidance.
    With min-SNR weights w(t), `timestep_sampling="importance"` draws t with probability w(t) / sum(w) and weighs
    every sample by mean(w): the same expected loss as uniform t with weights w(t), without spending samples on
    the timesteps whose weight is near zero (the ends of the schedule), so the gradient is less noisy.
    `pixel_weight` (B, 1, R, R) weighs each image's squared errors (a weighted mean over its pixels).
    """
    b, dev = x0.shape[0], x0.device
    T = len(alphas_cumprod)
    w_all = None if min_snr_gamma is None else min_snr_weights(alphas_cumprod.cpu(), min_snr_gamma, prediction_type)
    if timestep_sampling == "importance":
        if w_all is None:
            raise ConfigError("train.timestep_sampling: 'importance' samples t by the min-SNR weights; "
                              "set train.min_snr_gamma too")
        t = torch.multinomial(w_all, b, replacement=True, generator=generator)  # (B,) t ~ w(t) / sum(w)
    else:
        t = torch.randint(0, T, (b,), generator=generator)  # (B,) uniform over all of 0..T-1
    eps = torch.randn(x0.shape, generator=generator)  # (B, 3, R, R)
    keep = (torch.rand(b, generator=generator) >= cond_drop_prob).float()  # (B,)
    t, eps, keep = t.to(dev), eps.to(dev), keep.to(dev)
    y = labels * keep[:, None]  # (B, 24)
    xt = q_sample(x0, t, eps, alphas_cumprod)  # (B, 3, R, R)
    out = model(xt, t, y).float()  # (B, 3, R, R)
    target = eps if prediction_type == "epsilon" else v_target(x0, t, eps, alphas_cumprod)  # (B, 3, R, R)
    se = F.mse_loss(out, target, reduction="none")  # (B, 3, R, R)
    if pixel_weight is None:
        loss = se.mean(dim=(1, 2, 3))  # (B,)
    else:
        pw = pixel_weight.to(se)  # (B, 1, R, R)
        loss = (se * pw).mean(dim=(1, 2, 3)) / pw.mean(dim=(1, 2, 3))  # (B,)
    if w_all is not None:
        w = w_all.mean() if timestep_sampling == "importance" else w_all[t.cpu()]  # () or (B,)
        loss = loss * w.to(loss.device)
    return loss.mean()


# ---------------------------------------------------------------- data order
class BatchOrder:
    """Which dataset rows make batch k: epochs are seeded permutations laid end to end (no state to save)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int, global_batch: int) -> torch.Tensor:
        """Row indices (global_batch,) of the batch used at optimiser step `step` (0-based)."""
        pos = torch.arange(step * global_batch, (step + 1) * global_batch)
        epochs, offsets = pos // self.n, pos % self.n
        return torch.stack([self._perm(int(e))[int(o)] for e, o in zip(epochs, offsets)])

    def epoch(self, step: int, global_batch: int) -> float:
        return step * global_batch / self.n


def make_batch(images_u8: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, generator: torch.Generator,
               hflip: bool, device, masks: torch.Tensor | None = None, foreground_weight: float = 0.0):
    """uint8 rows -> x0 float (B, 3, R, R) in [-1, 1] (randomly mirrored), labels (B, 24) and, given object
    masks (N, R, R), pixel weights (B, 1, R, R) = 1 + foreground_weight on objects (else None), on device."""
    x0 = images_u8[idx].float() / 127.5 - 1.0  # (B, 3, R, R)
    pw = None if masks is None else 1.0 + foreground_weight * masks[idx, None].float()  # (B, 1, R, R)
    flip = torch.rand(len(idx), generator=generator) < 0.5 if hflip else None  # (B,)
    if flip is not None:
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        pw = None if pw is None else torch.where(flip[:, None, None, None], pw.flip(-1), pw)
    pw = None if pw is None else pw.to(device, non_blocking=True)
    return x0.to(device, non_blocking=True), labels[idx].to(device, non_blocking=True), pw


# ---------------------------------------------------------------- checkpoints
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


def _checkpoint_dirs(folder: Path) -> list[Path]:
    """Every checkpoint-<step>/ folder, complete or not, oldest first."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if CHECKPOINT_RE.match(p.name) and p.is_dir()),
                  key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def set_aside_later_checkpoints(out: Path, step: int) -> None:
    """Move the checkpoints after `step` to <out>/abandoned/: a run resumed from an earlier checkpoint (say, before
    a divergence) would otherwise keep them as its newest, and a later `resume="latest"` would go back to them."""
    later = [p for p in _checkpoint_dirs(out) if int(CHECKPOINT_RE.match(p.name).group(1)) > step]
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


def _rng_state(generator: torch.Generator) -> dict:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
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


def save_checkpoint(run: "_Run", step: int) -> Path:
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
            for p in complete[:-limit]:
                gone = out / f".{p.name}.del"  # renamed first: a kill during rmtree leaves no half checkpoint
                os.replace(p, gone)
                shutil.rmtree(gone, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    f = folder / "diffusion_pytorch_model.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{folder}: no diffusion_pytorch_model.safetensors (incomplete checkpoint?)")
    try:
        return load_file(str(f))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a cut file
        raise CheckpointError(f"{f}: truncated or not a safetensors file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__


def _torch_load(f: Path, **kwargs):
    """torch.load whose failures name the file."""
    try:
        return torch.load(f, **kwargs)
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing (incomplete checkpoint?)") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(f"{f}: truncated or not a PyTorch file ({_first_line(e)})") from None


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


def load_checkpoint(run: "_Run", ckpt: Path) -> int:
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
    optimizer = _torch_load(ckpt / "optimizer.pt", map_location=dev, weights_only=True)
    lr_scheduler = _torch_load(ckpt / "lr_scheduler.pt", weights_only=False)
    try:
        run.optimizer.load_state_dict(optimizer)
        run.lr_scheduler.load_state_dict(lr_scheduler)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt}: optimizer state does not match this model ({_first_line(e)})") from None
    _resume_lr(run)
    changed = changed_settings(state.get("config", {}).get("train", {}), run.cfg.to_dict()["train"])
    if changed and acc.is_main_process:
        print(f"resuming {ckpt.name} with changed settings: {', '.join(changed)}", flush=True)
    rng = ckpt / f"random_states_{acc.process_index}.pt"
    if rng.is_file():
        _set_rng_state(_torch_load(rng, weights_only=False), run.generator)
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


def _resume_lr(run: "_Run") -> None:
    """Set the LR of the resumed step from the config's train.lr and schedule: the restored LR scheduler and
    optimizer would otherwise keep the checkpoint's peak LR (resuming with a lower LR is the remedy for a
    diverging run) and, for one step, the old schedule's value."""
    sched, lr = run.lr_scheduler, run.cfg.train.lr
    sched.base_lrs = [lr] * len(sched.base_lrs)
    for g, factor in zip(sched.optimizer.param_groups, sched.lr_lambdas):
        g["initial_lr"], g["lr"] = lr, lr * factor(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]  # what get_last_lr() reports until the next step


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


# ---------------------------------------------------------------- export
def build_pipeline(model: ConditionalUNet, cfg: Config):
    """ConditionalDDPMPipeline with the profile's default sampler, steps and guidance."""
    from .pipeline import ConditionalDDPMPipeline
    s = cfg.sample
    scheduler = make_scheduler(cfg.schedule, s.sampler, s.timestep_spacing)
    return ConditionalDDPMPipeline(model, scheduler, default_num_inference_steps=s.num_steps,
                                   default_guidance_scale=s.guidance_scale, default_eta=s.eta)


EXPORT_STEP_FILE = "lab6_step.json"


def export_pipeline(run: "_Run", folder: Path, step: int) -> Path:
    """save_pretrained of the pipeline with the EMA weights (main process), atomically; records its step."""
    from .io import atomic_dir
    model = run.accelerator.unwrap_model(run.model)
    if run.accelerator.is_main_process:
        with ema_weights(model, run.ema), atomic_dir(folder) as tmp:
            build_pipeline(model, run.cfg).save_pretrained(tmp)
            write_text(tmp / "lab6_config.yaml", to_yaml(run.cfg))
            write_json(tmp / EXPORT_STEP_FILE, {"step": step})
    run.accelerator.wait_for_everyone()
    return folder


# ---------------------------------------------------------------- validation
class Validator:
    """Fixed-seed sample grids of the first label sets of each split, scored by the evaluator when there is one."""

    def __init__(self, cfg: Config, data_root: Path, device):
        from .data import CourseData
        self.cfg, self.device = cfg, device
        self.sets: dict[str, list[list[str]]] = {}
        data = CourseData(data_root)
        for split in cfg.train.validate_splits:
            if data.label_path(split).exists():
                self.sets[split] = data.label_sets(split)[:cfg.train.validate_num]
            else:
                print(f"warning: train.validate_splits: {data.label_path(split)} not found; '{split}' is not "
                      f"validated", file=sys.stderr)
        self.data_root = data_root
        self.evaluator = None
        self._tried = False

    def _evaluator(self):
        if not self._tried:
            self._tried = True
            try:
                from .sample import get_evaluator
                self.evaluator = get_evaluator(self.cfg.train.evaluator, self.data_root, self.device)
            except Exception as e:  # noqa: BLE001 - a broken evaluator never stops training
                print(f"warning: validation accuracy skipped: {str(e).splitlines()[0]}", file=sys.stderr)
        return self.evaluator

    @torch.no_grad()
    def __call__(self, model: ConditionalUNet, step: int, out: Path) -> dict:
        from .io import save_image
        from .plots import make_grid
        record: dict = {"step": step}
        was_training = model.training
        model.eval()
        pipe = build_pipeline(model, self.cfg)
        pipe.set_progress_bar_config(disable=True)
        try:
            for split, sets in self.sets.items():
                g = [torch.Generator().manual_seed(self.cfg.sample.seed + i) for i in range(len(sets))]
                x = pipe(labels=sets, generator=g, batch_size=self.cfg.sample.batch_size,
                         output_type="pt").images  # (B, 3, 64, 64)
                save_image(out / "samples" / f"{split}-step-{step:06d}.png", make_grid(x, nrow=8))
                ev = self._evaluator()
                if ev is not None:
                    record[f"{split}_acc"] = round(ev.accuracy(x, sets), 4)
        finally:
            model.train(was_training)
        return record


# ---------------------------------------------------------------- the loop
@dataclasses.dataclass
class _Run:
    cfg: Config
    out: Path
    accelerator: object
    model: torch.nn.Module
    ema: object
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    generator: torch.Generator


class _Stop(Exception):
    pass


def _resolve_device(device: str | None) -> str:
    check_device(device, "train.device")
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only the metrics lines up to `step` (a resumed run rewrites what came after)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    write_text(path, "".join(k + "\n" for k in keep))


class StopSignals:
    """Ctrl-C (SIGINT) or a job scheduler's SIGTERM during training: the step under way finishes, then the run
    writes its checkpoint and export and raises KeyboardInterrupt, so resuming it repeats an uninterrupted run
    exactly. A second signal interrupts at once."""

    def __init__(self):
        self.received: int | None = None

    def _handler(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    @contextmanager
    def installed(self):
        try:  # a signal the process was started ignoring (a shell's background job: SIGINT) stays ignored
            old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)
                   if signal.getsignal(sig) is not signal.SIG_IGN}
        except ValueError:  # not the main thread: a KeyboardInterrupt still lands mid-step
            yield self
            return
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def wsd_factor(step: int, warmup: int, max_steps: int, decay_fraction: float) -> float:
    """Warmup-stable-decay LR multiplier: linear warm-up, constant, then linear to 0 over the last decay_fraction."""
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, round(decay_fraction * max_steps))
    return min(1.0, max(0.0, (max_steps - step) / decay_steps))


def init_weights(model: ConditionalUNet, folder: Path) -> None:
    """Start from the weights of a model folder (an export or its unet/) with the same architecture."""
    src = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    if not (src / "config.json").is_file():
        raise ConfigError(f"train.init_from: {folder}: expected a model folder holding unet/config.json or "
                          f"config.json (a `lab6 train` export such as pretrained/quick)")
    other = ConditionalUNet.from_pretrained(src)
    mine, theirs = ({k: json.dumps(v) for k, v in c.items() if not k.startswith("_")} for c in (model.config, other.config))
    if mine != theirs:
        diff = sorted(k for k in mine if theirs.get(k) != mine[k])
        raise ConfigError(f"train.init_from: {src} holds another architecture (differs in {', '.join(diff)}); "
                          f"use the same model settings as the run that wrote it")
    model.load_state_dict(other.state_dict())


def make_lr_scheduler(t: TrainConfig, optimizer: torch.optim.Optimizer):
    """The LR schedule of train.lr_scheduler: diffusers' get_scheduler, or warmup_stable_decay (Hägele et al. 2024)."""
    from diffusers.optimization import get_scheduler
    if t.lr_scheduler == "warmup_stable_decay":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(wsd_factor, warmup=t.lr_warmup_steps, max_steps=t.max_steps,
                                         decay_fraction=t.lr_decay_fraction))
    return get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=t.lr_warmup_steps,
                         num_training_steps=t.max_steps)


def train(cfg: Config, resume: str | None = None, progress: bool = True,
          callback: Callable[[dict], None] | None = None) -> Path:
    """Train with `cfg` (optionally resuming 'latest' or a checkpoint path); returns the run folder.

    `callback(record)` gets every metrics.jsonl record (e.g. lab6.plots.LivePlot in a notebook).
    """
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from .data import IclevrDataset, default_data_root, object_masks

    t = cfg.train
    device = _resolve_device(t.device)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device.split(":")[1]))
    mp = t.mixed_precision if device.startswith("cuda") else "no"
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mp)
    main = accelerator.is_main_process
    out = Path(t.output_dir)
    # Every input is checked before the output folder is created, so a bad one leaves nothing behind.
    if main:
        check_writable_dir(out)
        repair_partial_saves(out)
    accelerator.wait_for_everyone()
    ckpt = resolve_resume(resume, out, warn=main)
    if resume is None and _checkpoint_dirs(out):
        raise CheckpointError(f"{out}: holds {_checkpoint_dirs(out)[-1].name} from an earlier run; resume it "
                              f"(--resume latest, or resume='latest') or choose another output folder")
    if ckpt is not None:
        check_compatible(ckpt, cfg)

    data_root = Path(t.data_root) if t.data_root else default_data_root()
    validator = Validator(cfg, data_root, accelerator.device) if main and t.validate_num > 0 else None
    ds = IclevrDataset(data_root, resolution=cfg.model.sample_size)
    if len(ds) == 0:
        raise DataError(f"{data_root}: no training images")
    images_u8, labels_all = ds.images, ds.labels  # (N, 3, R, R) uint8, (N, 24)
    masks = None
    if t.foreground_weight > 0:
        masks = object_masks(images_u8)  # (N, R, R) bool: objects and their shadows

    torch.manual_seed(t.seed)  # same initial weights on every process
    model = build_model(cfg.model)
    if t.init_from is not None and ckpt is None:
        init_weights(model, Path(t.init_from))
    noise_scheduler = make_scheduler(cfg.schedule, "ddpm")
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2),
                                  weight_decay=t.weight_decay)
    lr_scheduler = make_lr_scheduler(t, optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)  # LR scheduler stepped by hand: once per step
    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=t.ema_decay, use_ema_warmup=t.ema_warmup,
                   foreach=True, model_cls=ConditionalUNet, model_config=accelerator.unwrap_model(model).config)
    rank, world = accelerator.process_index, accelerator.num_processes
    generator = torch.Generator().manual_seed(t.seed * 7919 + 104729 * (rank + 1))
    run = _Run(cfg, out, accelerator, model, ema, optimizer, lr_scheduler, generator)

    step = 0
    if ckpt is not None:
        step = load_checkpoint(run, ckpt)
        if main:
            print(f"resumed from {ckpt} at step {step}", flush=True)
    elif resume is not None and main:
        print(f"no checkpoint in {out}; starting a new run", flush=True)
    metrics = out / "metrics.jsonl"
    if main:
        ensure_writable_dir(out)  # only now: every input has been checked
        if ckpt is not None:
            set_aside_later_checkpoints(out, step)
        _truncate_metrics(metrics, step)
        write_text(out / "config.yaml", to_yaml(cfg))
    accelerator.wait_for_everyone()

    ac = noise_scheduler.alphas_cumprod.to(accelerator.device, torch.float32)  # (T,)
    order = BatchOrder(len(ds), t.seed)
    gbs = t.batch_size * world
    if main:
        n = count_parameters(accelerator.unwrap_model(model))
        print(f"profile {cfg.profile}: {n / 1e6:.2f} M parameters, {len(ds)} images at {cfg.model.sample_size}px, "
              f"batch {t.batch_size} x {world} process(es) on {accelerator.device}, {mp if mp != 'no' else 'fp32'}",
              flush=True)

    start_step, last_ckpt = step, step if ckpt is not None else -1
    t_start = time.monotonic()
    t_window, loss_sum, loss_n, win_steps = t_start, 0.0, 0, 0
    spikes = LossSpikeWatch(after=step + max(t.lr_warmup_steps, 100))

    def window_loss() -> float:
        """Mean loss of the steps since the last log, over all processes."""
        return accelerator.reduce(loss_sum / loss_n, "mean").item() if world > 1 else float(loss_sum / loss_n)

    def check_before_save() -> None:
        """Never write diverged weights: the loss since the last log and the weights themselves must be finite."""
        if loss_n:
            check_finite(window_loss(), step, last_ckpt, out)
        params = [p.detach() for p in accelerator.unwrap_model(model).parameters()]
        check_finite(torch.nn.utils.get_total_norm(params).item(), step, last_ckpt, out, "the weights' norm")

    bar = tqdm(total=t.max_steps, initial=step, disable=not (progress and main), desc="train",
               dynamic_ncols=True)
    interrupted = mid_update = False
    rng = generator.get_state()  # the noise RNG at the last step boundary: what a checkpoint of `step` holds
    stops = StopSignals()
    model.train()
    try:
        with stops.installed():
            while step < t.max_steps:
                over = t.max_minutes is not None and time.monotonic() - t_start > 60 * t.max_minutes
                stop = stops.received is not None
                if world > 1:  # every process stops at the same step
                    flags = accelerator.reduce(torch.tensor([float(over), float(stop)], device=accelerator.device),
                                               "max")
                    over, stop = bool(flags[0].item()), bool(flags[1].item())
                if stop:
                    raise KeyboardInterrupt
                if over:
                    if main:
                        print(f"time budget of {t.max_minutes} min reached at step {step}", flush=True)
                    break
                idx = order.indices(step, gbs)[rank * t.batch_size:(rank + 1) * t.batch_size]  # (B,)
                x0, y, pw = make_batch(images_u8, labels_all, idx, generator, t.hflip, accelerator.device,
                                       masks, t.foreground_weight)
                loss = diffusion_loss(model, x0, y, ac, generator, cfg.schedule.prediction_type,
                                      t.cond_drop_prob, t.min_snr_gamma, t.timestep_sampling, pw)
                accelerator.backward(loss)
                if t.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
                mid_update = True
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                ema.step(accelerator.unwrap_model(model).parameters())
                step += 1
                rng, mid_update = generator.get_state(), False
                loss_sum += loss.detach()
                loss_n += 1
                win_steps += 1

                if step % t.log_every == 0 or step == t.max_steps:
                    now = time.monotonic()
                    ips = win_steps * gbs / max(now - t_window, 1e-9)
                    mean_loss = window_loss()
                    check_finite(mean_loss, step, last_ckpt, out)
                    spike = spikes(mean_loss, loss_n, step)
                    if spike and main:
                        since = f"{out / f'checkpoint-{last_ckpt}'} predates it" if last_ckpt > 0 \
                            else "no checkpoint predates it"
                        bar.write(f"warning: {out}: {spike}; {since}. If it stays up, stop and resume from an "
                                  f"earlier checkpoint with a lower train.lr", file=sys.stderr)
                    rec = {"step": step, "loss": round(mean_loss, 6), "lr": lr_scheduler.get_last_lr()[0],
                           "img_per_s": round(ips, 2), "elapsed_s": round(now - t_start, 1)}
                    if accelerator.device.type == "cuda":
                        rec["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    if main:
                        _log(metrics, rec, callback)
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{ips:.1f}")
                    t_window, loss_sum, loss_n, win_steps = now, 0.0, 0, 0
                bar.update(1)
                pause = time.monotonic()  # checkpoints and validation do not count against img/s
                if step % t.checkpoint_every == 0 and step < t.max_steps:
                    check_before_save()
                    save_checkpoint(run, step)
                    last_ckpt = step
                if validator is not None and t.validate_every and step % t.validate_every == 0 \
                        and step < t.max_steps:
                    _validate(run, validator, step, metrics, bar, callback)
                if t.validate_every and step % t.validate_every == 0:
                    accelerator.wait_for_everyone()
                t_window += time.monotonic() - pause
    except KeyboardInterrupt:
        interrupted = True
        if mid_update:  # a second signal cut an optimizer update: these weights belong to no step
            bar.close()
            if main:
                print(f"interrupted during the update of step {step + 1}: nothing saved; the last checkpoint is "
                      f"{out / f'checkpoint-{last_ckpt}' if last_ckpt > 0 else 'none'}", file=sys.stderr, flush=True)
            raise
        generator.set_state(rng)  # the draws of an unfinished step are made again on resume
        if main:
            bar.write(f"interrupted at step {step}: writing a checkpoint and the export")
    finally:
        bar.close()
    # Always end with a checkpoint, the export and (when training happened) a last validation.
    with stops.installed():
        if last_ckpt != step:
            check_before_save()
            save_checkpoint(run, step)
        export_pipeline(run, out / EXPORT_DIR, step)
        if validator is not None and step > start_step and not interrupted:
            _validate(run, validator, step, metrics, None, callback)
    interrupted = interrupted or stops.received is not None  # a signal during the final save still stops the caller
    accelerator.wait_for_everyone()
    if main:
        print(f"saved {out / f'checkpoint-{step}'} and {out / EXPORT_DIR}", flush=True)
    accelerator.end_training()
    if interrupted:
        raise KeyboardInterrupt
    return out


class LossSpikeWatch:
    """Warns once per episode when the smoothed loss climbs above `factor` x its lowest value: a run that diverged
    without reaching NaN (the wider quick UNet's CPU hour stayed at 0.25-0.41 after a spike from ~0.02).

    The loss is smoothed by an exponential moving average over about `tau` steps, fed with each logged window's
    mean (so log_every does not change it), and watched from `after` steps on (after the LR warm-up). Healthy
    runs stay within 1.12x of their lowest smoothed loss (the quick hour of 2026-11-26, 9600 steps; the shipped
    5000-step run 1.05x; benchmarks/LOG.md), diverged ones rose 10-40x."""

    def __init__(self, after: int, factor: float = 4.0, tau: float = 50.0):
        self.after, self.factor, self.tau = after, factor, tau
        self.smooth: float | None = None
        self.best, self.best_step, self.warned = math.inf, 0, False

    def __call__(self, loss: float, steps: int, step: int) -> str | None:
        """Feed the mean loss of the `steps` steps that end at `step`; a one-line warning when a spike starts."""
        if not math.isfinite(loss):
            return None
        keep = (1 - 1 / self.tau) ** steps
        self.smooth = loss if self.smooth is None else keep * self.smooth + (1 - keep) * loss
        if step < self.after:
            return None
        ratio = self.smooth / self.best if self.best > 0 else 0.0
        if ratio > self.factor and not self.warned:
            self.warned = True
            return (f"the smoothed loss {self.smooth:.4g} at step {step} is {ratio:.0f}x its lowest, "
                    f"{self.best:.4g} at step {self.best_step}: the run may be diverging")
        if ratio < self.factor / 2:
            self.warned = False
        if self.smooth < self.best:
            self.best, self.best_step = self.smooth, step
        return None


def check_finite(value: float, step: int, last_ckpt: int | None, out: Path, what: str = "the loss") -> None:
    """Stop training with a clear error once the loss (or the weights' norm) is NaN or inf: every later step,
    checkpoint and export would hold diverged weights."""
    if math.isfinite(value):
        return
    good = f"the last checkpoint written, {out / f'checkpoint-{last_ckpt}'}, predates it" if last_ckpt > 0 \
        else "no checkpoint was written before it"
    raise TrainingError(f"{out}: training diverged: {what} is {value} by step {step}; {good}. Resume from an "
                        f"earlier checkpoint with a lower train.lr (or a stronger train.grad_clip)")


def _log(metrics: Path, record: dict, callback) -> None:
    _append_metrics(metrics, record)
    if callback is not None:
        callback(record)


def _validate(run: _Run, validator: Validator, step: int, metrics: Path, bar, callback=None) -> None:
    model = run.accelerator.unwrap_model(run.model)
    with ema_weights(model, run.ema):
        rec = validator(model, step, run.out)
    _log(metrics, rec, callback)
    msg = "validation " + ", ".join(f"{k} {v}" for k, v in rec.items())
    (bar.write if bar is not None else print)(msg)


# ---------------------------------------------------------------- CLI
def config_from_args(args) -> Config:
    """The profile, then --config, then the explicit command-line options."""
    over: dict = {"output_dir": str(args.out)}
    for key, name in (("data_root", "data"), ("max_steps", "max_steps"), ("max_minutes", "max_minutes"),
                      ("checkpoint_every", "checkpoint_every"), ("device", "device"),
                      ("batch_size", "batch_size"), ("lr", "lr"), ("init_from", "init_from")):
        value = getattr(args, name, None)
        if value is not None:
            over[key] = value
    if getattr(args, "seed", None) is not None:
        over["seed"] = args.seed
    train_over = {k: over.pop(k) for k in ("batch_size", "seed") if k in over}
    if train_over:
        over["train"] = train_over
    return load_config(args.profile, getattr(args, "config", None), **over)


def main_train(args) -> int:
    """`lab6 train`: train with a profile and write the run folder; 0 on success."""
    cfg = config_from_args(args)
    train(cfg, resume=args.resume, progress=not getattr(args, "no_progress", False))
    return 0


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


__all__ = ["train", "main_train", "diffusion_loss", "BatchOrder", "save_checkpoint", "load_checkpoint",
           "latest_checkpoint", "list_checkpoints", "checkpoint_problem", "check_compatible", "export_pipeline",
           "build_pipeline", "ema_weights", "load_run_config", "EXPORT_DIR"]
