"""Training the conditional DDPM (Algorithm 1 of Ho et al. 2020) with CFG dropout, EMA and exact resume.

    from lab6.config import build_config
    from lab6.train import train
    run_dir = train(build_config("quick", output_dir="outputs/quick/train"))

The run folder holds `config.yaml`, `metrics.jsonl` (step, loss, lr, img/s; validation accuracies),
`samples/<split>-step-<step>.png` (fixed-seed validation grids), `checkpoint-<step>/` (model, EMA, optimizer,
LR scheduler, RNG states, step; written atomically, the newest `checkpoints_total_limit` kept) and the final
export `pipeline/` (ConditionalDDPMPipeline.save_pretrained with the EMA weights and the default sampler);
lab6.checkpoints describes and reads that format. Training always ends with a checkpoint and the export: at
max_steps, at max_minutes or on Ctrl-C / SIGTERM (lab6.guards).
`accelerate launch --num_processes N -m lab6 train ...` trains data-parallel; batch_size is per process.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .checkpoints import (
    EXPORT_DIR,
    TrainState,
    build_pipeline,
    check_compatible,
    checkpoint_dirs,
    ema_weights,
    export_pipeline,
    init_weights,
    repair_partial_saves,
    resolve_resume,
    restore_checkpoint,
    save_checkpoint,
    set_aside_later_checkpoints,
)
from .config import Config, TrainConfig, to_yaml
from .data import CourseData, IclevrDataset, default_data_root, object_masks
from .devices import resolve_device
from .errors import CheckpointError, ConfigError, DataError
from .evaluator import get_evaluator
from .guards import LossSpikeWatch, StopSignals, check_finite
from .io import check_writable_dir, ensure_writable_dir, save_image, write_text
from .model import ConditionalUNet, build_model, count_parameters
from .plots import make_grid
from .schedules import make_scheduler, q_sample, snr, v_target

METRICS_FILE = "metrics.jsonl"


# ---------------------------------------------------------------- Algorithm 1
def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weight of every timestep (Hang et al. 2023), for eps- or v-prediction: (T,)."""
    s = snr(alphas_cumprod).float()  # (T,)
    return s.clamp(max=gamma) / (s + 1 if prediction_type == "v_prediction" else s)


def diffusion_loss(model, x0: torch.Tensor, labels: torch.Tensor, alphas_cumprod: torch.Tensor,
                   generator: torch.Generator, *, prediction_type: str = "epsilon", cond_drop_prob: float = 0.0,
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


# ---------------------------------------------------------------- LR schedule
def wsd_factor(step: int, warmup: int, max_steps: int, decay_fraction: float) -> float:
    """Warmup-stable-decay LR multiplier: linear warm-up, constant, then linear to 0 over the last decay_fraction."""
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, round(decay_fraction * max_steps))
    return min(1.0, max(0.0, (max_steps - step) / decay_steps))



def make_lr_scheduler(tc: TrainConfig, optimizer: torch.optim.Optimizer):
    """The LR schedule of train.lr_scheduler: diffusers' get_scheduler, or warmup_stable_decay (Hägele et al. 2024)."""
    if tc.lr_scheduler == "warmup_stable_decay":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(wsd_factor, warmup=tc.lr_warmup_steps, max_steps=tc.max_steps,
                                         decay_fraction=tc.lr_decay_fraction))
    return get_scheduler(tc.lr_scheduler, optimizer, num_warmup_steps=tc.lr_warmup_steps,
                         num_training_steps=tc.max_steps)



# ---------------------------------------------------------------- a time budget as a step count
def measure_speed(cfg: Config, steps: int = 8, warmup: int = 3, max_seconds: float = 20.0) -> float:
    """Training images per second of cfg's model, loss and batch on train.device (random images, a few seconds),
    under train.mixed_precision's autocast on CUDA as the training loop runs. Steps slower than max_seconds / 4
    (a GPU profile's batch on a CPU) cut the warm-up to one step and the timing to max_seconds."""
    tc = cfg.train
    device = resolve_device(tc.device, "train.device")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.mixed_precision)
    amp = torch.autocast("cuda", dtype=half, enabled=device.type == "cuda" and half is not None)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    g = torch.Generator().manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr)
    alphas_cumprod = make_scheduler(cfg.schedule, "ddpm").alphas_cumprod.to(device, torch.float32)  # (T,)
    r = cfg.model.sample_size
    x0 = torch.randn(tc.batch_size, 3, r, r, generator=g).to(device)  # (B, 3, R, R)
    y = torch.zeros(tc.batch_size, 24, device=device)
    y[:, 1], y[:, 14] = 1.0, 1.0  # (B, 24): a red cube and a green cylinder
    pw = torch.ones(tc.batch_size, 1, r, r, device=device) if tc.foreground_weight > 0 else None
    timed, first = 0, time.perf_counter()
    for i in range(warmup + steps):
        if i == 1 and warmup > 1 and time.perf_counter() - first > max_seconds / 4:
            warmup = 1  # one slow step warms up as well as three
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        elif i > warmup and time.perf_counter() - start > max_seconds:
            break
        timed += i >= warmup
        with amp:
            loss = diffusion_loss(model, x0, y, alphas_cumprod, g, prediction_type=cfg.schedule.prediction_type,
                                  cond_drop_prob=tc.cond_drop_prob, min_snr_gamma=tc.min_snr_gamma,
                                  timestep_sampling=tc.timestep_sampling, pixel_weight=pw)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return timed * tc.batch_size / (time.perf_counter() - start)


# The training loop (batches from uint8, EMA, grad clip, logging) runs at about LOOP_SHARE of measure_speed's rate
# on a 2-core CPU (benchmarks/LOG.md); validation gets at most VALIDATION_SHARE of a time budget.
LOOP_SHARE, VALIDATION_SHARE = 0.8, 0.15


def steps_in_budget(img_per_s: float, batch_size: int, minutes: float) -> int:
    """Optimiser steps that fit `minutes` at measure_speed's img_per_s, leaving VALIDATION_SHARE for validation."""
    return max(1, int(minutes * 60 * (1 - VALIDATION_SHARE) * LOOP_SHARE * img_per_s / batch_size))


def validation_steps(steps: int, points: int = 5) -> tuple[int, ...]:
    """`points` - 1 log-spaced steps before `steps` (1/16, 1/8, 1/4, 1/2 of it for 5): with the validation at the
    end, a learning curve whose early part, where most changes, is not one point."""
    return tuple(sorted({max(1, steps >> k) for k in range(1, points)} - {steps}))


def fit_to_budget(cfg: Config, minutes: float, points: int = 5) -> tuple[Config, float]:
    """(cfg with max_steps cut to what fits `minutes` here and `points` validations, log-spaced, the last at the
    end; the img/s measured). The LR schedule then ends inside the budget instead of being cut by it."""
    img_per_s = measure_speed(cfg)
    steps = min(cfg.train.max_steps, steps_in_budget(img_per_s, cfg.train.batch_size, minutes))
    train = dataclasses.replace(cfg.train, max_steps=steps, max_minutes=minutes, validate_every=0,
                                validate_at=validation_steps(steps, points))
    return dataclasses.replace(cfg, train=train), img_per_s


# ---------------------------------------------------------------- validation
class Validator:
    """Fixed-seed sample grids of the first label sets of each split, scored by the evaluator when there is one."""

    def __init__(self, cfg: Config, data_root: Path, device):
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
                self.evaluator = get_evaluator(self.cfg.train.evaluator, self.data_root, self.device)
            except Exception as e:  # noqa: BLE001 - a broken evaluator never stops training
                print(f"warning: validation accuracy skipped: {str(e).splitlines()[0]}", file=sys.stderr)
        return self.evaluator

    @torch.no_grad()
    def __call__(self, model: ConditionalUNet, step: int, out: Path) -> dict:
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


def _log(metrics: Path, record: dict, callback) -> None:
    _append_metrics(metrics, record)
    if callback is not None:
        callback(record)


def _validate(run: TrainState, validator: Validator, step: int, bar, callback=None) -> None:
    model = run.accelerator.unwrap_model(run.model)
    with ema_weights(model, run.ema):
        rec = validator(model, step, run.out)
    _log(run.out / METRICS_FILE, rec, callback)
    msg = "validation " + ", ".join(f"{k} {v}" for k, v in rec.items())
    (bar.write if bar is not None else print)(msg)


# ---------------------------------------------------------------- setting up a run
def make_accelerator(tc: TrainConfig) -> Accelerator:
    """An Accelerator on train.device (cuda when available), with train.mixed_precision on CUDA only."""
    device = resolve_device(tc.device, "train.device")
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)
    mp = tc.mixed_precision if device.type == "cuda" else "no"
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mp)


def find_resume_checkpoint(accelerator: Accelerator, cfg: Config, resume: str | None) -> Path | None:
    """The checkpoint to resume from (None: a new run), checked against cfg; an interrupted save is repaired first."""
    out = Path(cfg.train.output_dir)
    if accelerator.is_main_process:
        check_writable_dir(out)
        repair_partial_saves(out)
    accelerator.wait_for_everyone()
    ckpt = resolve_resume(resume, out, warn=accelerator.is_main_process)
    if resume is None and checkpoint_dirs(out):
        raise CheckpointError(f"{out}: holds {checkpoint_dirs(out)[-1].name} from an earlier run; resume it "
                              f"(--resume latest, or resume='latest') or choose another output folder")
    if ckpt is not None:
        check_compatible(ckpt, cfg)
    return ckpt


@dataclasses.dataclass
class TrainingSet:
    """The training images and labels, on the CPU; batches are cut from them by BatchOrder."""
    images: torch.Tensor  # (N, 3, R, R) uint8
    labels: torch.Tensor  # (N, 24)
    masks: torch.Tensor | None  # (N, R, R) bool: objects and their shadows (train.foreground_weight > 0)


def load_training_set(cfg: Config, data_root: Path) -> TrainingSet:
    ds = IclevrDataset(data_root, resolution=cfg.model.sample_size)
    if len(ds) == 0:
        raise DataError(f"{data_root}: no training images")
    masks = object_masks(ds.images) if cfg.train.foreground_weight > 0 else None
    return TrainingSet(ds.images, ds.labels, masks)


def build_state(cfg: Config, accelerator: Accelerator, init_from: str | None) -> TrainState:
    """Model (from init_from's weights when given), EMA, AdamW, LR schedule and this process's noise generator."""
    tc = cfg.train
    torch.manual_seed(tc.seed)  # same initial weights on every process
    model = build_model(cfg.model)
    if init_from is not None:
        init_weights(model, Path(init_from))
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                  weight_decay=tc.weight_decay)
    lr_scheduler = make_lr_scheduler(tc, optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)  # LR scheduler stepped by hand: once per step
    unwrapped = accelerator.unwrap_model(model)
    ema = EMAModel(unwrapped.parameters(), decay=tc.ema_decay, use_ema_warmup=tc.ema_warmup, foreach=True,
                   model_cls=ConditionalUNet, model_config=unwrapped.config)
    generator = torch.Generator().manual_seed(tc.seed * 7919 + 104729 * (accelerator.process_index + 1))
    return TrainState(cfg, Path(tc.output_dir), accelerator, model, ema, optimizer, lr_scheduler, generator)


def start_run_folder(run: TrainState, ckpt: Path | None, resume: str | None) -> int:
    """Restore ckpt (step 0 without one), then write the run folder: config.yaml, metrics.jsonl up to the step."""
    acc, out, main = run.accelerator, run.out, run.accelerator.is_main_process
    step = 0
    if ckpt is not None:
        step = restore_checkpoint(run, ckpt)
        if main:
            print(f"resumed from {ckpt} at step {step}", flush=True)
    elif resume is not None and main:
        print(f"no checkpoint in {out}; starting a new run", flush=True)
    if main:
        ensure_writable_dir(out)  # only now: every input has been checked
        if ckpt is not None:
            set_aside_later_checkpoints(out, step)
        _truncate_metrics(out / METRICS_FILE, step)
        write_text(out / "config.yaml", to_yaml(run.cfg))
    acc.wait_for_everyone()
    return step


# ---------------------------------------------------------------- the loop
class LossWindow:
    """The steps since the last log line: their summed loss and count, and when the window began."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.start = self.began = time.monotonic()
        self.loss_sum, self.n = 0.0, 0

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach()
        self.n += 1

    def mean(self) -> float:
        """Mean loss of the window's steps over all processes."""
        if self.accelerator.num_processes > 1:
            return self.accelerator.reduce(self.loss_sum / self.n, "mean").item()
        return float(self.loss_sum / self.n)

    def reset(self, now: float) -> None:
        self.began, self.loss_sum, self.n = now, 0.0, 0


def check_before_save(run: TrainState, window: LossWindow, step: int, last_ckpt: int) -> None:
    """Never write diverged weights: the loss since the last log and the weights themselves must be finite."""
    if window.n:
        check_finite(window.mean(), step, last_ckpt, run.out)
    params = [p.detach() for p in run.accelerator.unwrap_model(run.model).parameters()]
    check_finite(torch.nn.utils.get_total_norm(params).item(), step, last_ckpt, run.out, "the weights' norm")


def time_to_stop(run: TrainState, stops: StopSignals, window: LossWindow, step: int) -> bool:
    """True at the time budget; KeyboardInterrupt after a stop signal. Every process stops at the same step."""
    acc, tc = run.accelerator, run.cfg.train
    over = tc.max_minutes is not None and time.monotonic() - window.start > 60 * tc.max_minutes
    stop = stops.received is not None
    if acc.num_processes > 1:
        flags = acc.reduce(torch.tensor([float(over), float(stop)], device=acc.device), "max")
        over, stop = bool(flags[0].item()), bool(flags[1].item())
    if stop:
        raise KeyboardInterrupt
    if over and acc.is_main_process:
        print(f"time budget of {tc.max_minutes} min reached at step {step}", flush=True)
    return over


def log_window(run: TrainState, window: LossWindow, spikes: LossSpikeWatch, step: int, last_ckpt: int, bar,
               callback) -> None:
    """Write the window's {step, loss, lr, img_per_s, elapsed_s} record; stop on a NaN loss, warn on a spike."""
    acc, out, tc = run.accelerator, run.out, run.cfg.train
    now = time.monotonic()
    ips = window.n * tc.batch_size * acc.num_processes / max(now - window.began, 1e-9)
    mean_loss = window.mean()
    check_finite(mean_loss, step, last_ckpt, out)
    spike = spikes(mean_loss, window.n, step)
    if spike:
        run.keep_step = last_ckpt if last_ckpt > 0 else None
    elif not spikes.warned:
        run.keep_step = None  # the loss came back down: the usual pruning again
    if spike and acc.is_main_process:
        since = (f"{out / f'checkpoint-{last_ckpt}'} predates it and is kept while the loss stays up"
                 if last_ckpt > 0 else "no checkpoint predates it")
        bar.write(f"warning: {out}: {spike}; {since}. If it stays up, stop and resume from that checkpoint with a "
                  f"lower train.lr", file=sys.stderr)
    rec = {"step": step, "loss": round(mean_loss, 6), "lr": run.lr_scheduler.get_last_lr()[0],
           "img_per_s": round(ips, 2), "elapsed_s": round(now - window.start, 1)}
    if acc.device.type == "cuda":
        rec["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if acc.is_main_process:
        _log(out / METRICS_FILE, rec, callback)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{ips:.1f}")
    window.reset(now)


def run_steps(run: TrainState, data: TrainingSet, validator: Validator | None, window: LossWindow, *, step: int,
              last_ckpt: int, stops: StopSignals, bar, callback) -> tuple[int, int, bool]:
    """Algorithm 1 from `step` until train.max_steps, the time budget or a stop signal, with the periodic log,
    checkpoints and validation; returns (step, step of the last checkpoint, whether a signal stopped it)."""
    cfg, tc, acc = run.cfg, run.cfg.train, run.accelerator
    alphas_cumprod = make_scheduler(cfg.schedule, "ddpm").alphas_cumprod.to(acc.device, torch.float32)  # (T,)
    order, rank = BatchOrder(len(data.images), tc.seed), acc.process_index
    global_batch = tc.batch_size * acc.num_processes
    spikes = LossSpikeWatch(after=step + max(tc.lr_warmup_steps, 100))
    rng, mid_update = run.generator.get_state(), False  # the noise RNG at the last step boundary
    run.model.train()
    try:
        while step < tc.max_steps and not time_to_stop(run, stops, window, step):
            # One optimiser step on this process's share of batch `step`
            idx = order.indices(step, global_batch)[rank * tc.batch_size:(rank + 1) * tc.batch_size]  # (B,)
            x0, y, pw = make_batch(data.images, data.labels, idx, run.generator, tc.hflip, acc.device, data.masks,
                                   tc.foreground_weight)
            loss = diffusion_loss(run.model, x0, y, alphas_cumprod, run.generator,
                                  prediction_type=cfg.schedule.prediction_type, cond_drop_prob=tc.cond_drop_prob,
                                  min_snr_gamma=tc.min_snr_gamma, timestep_sampling=tc.timestep_sampling,
                                  pixel_weight=pw)
            acc.backward(loss)
            if tc.grad_clip > 0:
                acc.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
            mid_update = True
            run.optimizer.step()
            run.lr_scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.ema.step(acc.unwrap_model(run.model).parameters())
            step += 1
            rng, mid_update = run.generator.get_state(), False
            window.add(loss)

            # Log, checkpoint and validate; their time does not count against img/s
            if step % tc.log_every == 0 or step == tc.max_steps:
                log_window(run, window, spikes, step, last_ckpt, bar, callback)
            bar.update(1)
            pause = time.monotonic()
            if step % tc.checkpoint_every == 0 and step < tc.max_steps:
                check_before_save(run, window, step, last_ckpt)
                save_checkpoint(run, step)
                last_ckpt = step
            if (tc.validate_every and step % tc.validate_every == 0) or step in tc.validate_at:
                if validator is not None and step < tc.max_steps:
                    _validate(run, validator, step, bar, callback)
                acc.wait_for_everyone()
            window.began += time.monotonic() - pause
    except KeyboardInterrupt:
        if mid_update:  # a second signal cut an optimizer update: these weights belong to no step
            bar.close()
            if acc.is_main_process:
                print(f"interrupted during the update of step {step + 1}: nothing saved; the last checkpoint is "
                      f"{run.out / f'checkpoint-{last_ckpt}' if last_ckpt > 0 else 'none'}", file=sys.stderr,
                      flush=True)
            raise
        run.generator.set_state(rng)  # the draws of an unfinished step are made again on resume
        if acc.is_main_process:
            bar.write(f"interrupted at step {step}: writing a checkpoint and the export")
        return step, last_ckpt, True
    return step, last_ckpt, False


def train(cfg: Config, resume: str | None = None, progress: bool = True,
          callback: Callable[[dict], None] | None = None, recipe: str | None = None) -> Path:
    """Train with `cfg` (optionally resuming 'latest' or a checkpoint path); returns the run folder.

    `callback(record)` gets every metrics.jsonl record (e.g. lab6.plots.LivePlot in a notebook); `recipe` (the
    --config file) is recorded in the export's stages.json.
    """
    tc = cfg.train
    # Check every input before the output folder is created, so a bad one leaves nothing behind
    accelerator = make_accelerator(tc)
    main = accelerator.is_main_process
    ckpt = find_resume_checkpoint(accelerator, cfg, resume)
    data_root = Path(tc.data_root) if tc.data_root else default_data_root()
    validator = Validator(cfg, data_root, accelerator.device) if main and tc.validate_num > 0 else None
    data = load_training_set(cfg, data_root)

    # Initialize the model, EMA, optimizer and LR schedule; resume them from the checkpoint
    run = build_state(cfg, accelerator, tc.init_from if ckpt is None else None)
    run.recipe = recipe
    step = start_step = start_run_folder(run, ckpt, resume)
    if main:
        mp = accelerator.mixed_precision
        print(f"profile {cfg.profile}: {count_parameters(accelerator.unwrap_model(run.model)) / 1e6:.2f} M "
              f"parameters, {len(data.images)} images at {cfg.model.sample_size}px, batch {tc.batch_size} x "
              f"{accelerator.num_processes} process(es) on {accelerator.device}, {mp if mp != 'no' else 'fp32'}",
              flush=True)

    # Train!
    window, stops = LossWindow(accelerator), StopSignals()
    bar = tqdm(total=tc.max_steps, initial=step, disable=not (progress and main), desc="train", dynamic_ncols=True)
    try:
        with stops.installed():
            step, last_ckpt, interrupted = run_steps(run, data, validator, window, step=step,
                                                     last_ckpt=step if ckpt is not None else -1, stops=stops,
                                                     bar=bar, callback=callback)
    finally:
        bar.close()

    # Always end with a checkpoint, the export and (when training happened) a last validation
    with stops.installed():
        if last_ckpt != step:
            check_before_save(run, window, step, last_ckpt)
            save_checkpoint(run, step)
        export_pipeline(run, run.out / EXPORT_DIR, step)
        if validator is not None and step > start_step and not interrupted:
            _validate(run, validator, step, None, callback)
    interrupted = interrupted or stops.received is not None  # a signal during the final save still stops the caller
    accelerator.wait_for_everyone()
    if main:
        print(f"saved {run.out / f'checkpoint-{step}'} and {run.out / EXPORT_DIR}", flush=True)
    accelerator.end_training()
    if interrupted:
        raise KeyboardInterrupt
    return run.out
