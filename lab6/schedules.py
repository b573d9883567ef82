"""Noise schedules: diffusers schedulers built from a ScheduleConfig and q(x_t | x_0) (their plots: lab6.plots).

Forward process (Ho et al. 2020, eq. 4):  x_t = sqrt(alphas_cumprod[t]) * x0 + sqrt(1 - alphas_cumprod[t]) * eps.
v-prediction target (Salimans & Ho 2022):  v = sqrt(alphas_cumprod[t]) * eps - sqrt(1 - alphas_cumprod[t]) * x0.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

from .config import SAMPLERS, ScheduleConfig
from .errors import ConfigError

SAMPLER_CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler,
                   "dpm-sde": DPMSolverMultistepScheduler}
_DPM_ALGORITHMS = {"dpm": "dpmsolver++", "dpm-sde": "sde-dpmsolver++"}  # DPM-Solver++(2M), and its SDE variant
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
                  "rescale_betas_zero_snr", "trained_betas")


def _schedule_kwargs(schedule: ScheduleConfig | Mapping | SchedulerMixin | None) -> dict:
    """The noise-schedule arguments shared by every diffusers scheduler."""
    if schedule is None:
        schedule = ScheduleConfig()
    if isinstance(schedule, ScheduleConfig):
        return dict(num_train_timesteps=schedule.num_train_timesteps, beta_schedule=schedule.beta_schedule,
                    prediction_type=schedule.prediction_type, rescale_betas_zero_snr=schedule.zero_terminal_snr)
    config = schedule.config if isinstance(schedule, SchedulerMixin) else schedule
    return {k: config[k] for k in _SCHEDULE_KEYS if k in config and config[k] is not None}


def make_scheduler(schedule: ScheduleConfig | Mapping | SchedulerMixin | None = None, sampler: str = "ddpm",
                   timestep_spacing: str = "leading", **kwargs) -> SchedulerMixin:
    """A diffusers scheduler for a schedule or another scheduler: 'ddpm', 'ddim', 'dpm' = DPM-Solver++(2M), or
    'dpm-sde' = SDE-DPM-Solver++(2M) (stochastic: it adds fresh noise at every step, like DDPM)."""
    if sampler not in SAMPLER_CLASSES:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    # Every sampler clips its predicted x0 to [-1, 1]: dynamic thresholding with sample_max_value 1 is exactly that
    # clip. DPM-Solver++ with squaredcos_cap_v2 and eps-prediction gives pure noise without it (alphas_cumprod[999]
    # = 2.4e-9 amplifies eps errors; shared FINDINGS). Setting it on all three keeps it through
    # `OtherScheduler.from_config(pipe.scheduler.config)` swaps.
    args = _schedule_kwargs(schedule) | dict(timestep_spacing=timestep_spacing, thresholding=True,
                                             sample_max_value=1.0)
    if sampler in ("ddpm", "ddim"):
        args |= dict(clip_sample=True, clip_sample_range=1.0)
    else:
        args |= dict(algorithm_type=_DPM_ALGORITHMS[sampler], solver_order=2)
    return SAMPLER_CLASSES[sampler](**(args | kwargs))


def sampler_name(scheduler: SchedulerMixin) -> str:
    """'ddpm', 'ddim', 'dpm' or 'dpm-sde' for one of our schedulers, else the class name."""
    if type(scheduler) is DPMSolverMultistepScheduler:
        sde = str(scheduler.config.get("algorithm_type", "")).startswith("sde")
        return "dpm-sde" if sde else "dpm"
    for name, cls in SAMPLER_CLASSES.items():
        if type(scheduler) is cls:
            return name
    return type(scheduler).__name__


def alphas_cumprod(schedule: ScheduleConfig | Mapping | SchedulerMixin | torch.Tensor | None = None) -> torch.Tensor:
    """alpha-bar_t for t = 0..T-1 (float64 on CPU), from a schedule, scheduler config or scheduler."""
    if isinstance(schedule, torch.Tensor):
        return schedule
    if isinstance(schedule, SchedulerMixin) and hasattr(schedule, "alphas_cumprod"):
        return schedule.alphas_cumprod.double()
    return DDPMScheduler(**_schedule_kwargs(schedule)).alphas_cumprod.double()


def _gather(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """table[t] reshaped to broadcast over x (B, C, H, W)."""
    t = torch.as_tensor(t, device=table.device).long().reshape(-1)
    return table[t].to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1)


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
             schedule: ScheduleConfig | Mapping | SchedulerMixin | torch.Tensor | None = None) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) with the given noise eps (same as DDPMScheduler.add_noise)."""
    alpha_prod_t = _gather(alphas_cumprod(schedule).to(torch.float32), t, x0)  # (B, 1, 1, 1)
    return alpha_prod_t ** 0.5 * x0 + (1 - alpha_prod_t) ** 0.5 * eps  # (B, 3, R, R)


def v_target(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
             schedule: ScheduleConfig | Mapping | SchedulerMixin | torch.Tensor | None = None) -> torch.Tensor:
    """The v-prediction target sqrt(alpha-bar_t) eps - sqrt(1 - alpha-bar_t) x0 (same as DDPMScheduler.get_velocity)."""
    alpha_prod_t = _gather(alphas_cumprod(schedule).to(torch.float32), t, x0)  # (B, 1, 1, 1)
    return alpha_prod_t ** 0.5 * eps - (1 - alpha_prod_t) ** 0.5 * x0  # (B, 3, R, R)


def predict_x0(xt: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor, prediction_type: str,
               schedule: ScheduleConfig | Mapping | SchedulerMixin | torch.Tensor | None = None) -> torch.Tensor:
    """The network's estimate of x0 from x_t and its eps or v output."""
    alpha_prod_t = _gather(alphas_cumprod(schedule).to(torch.float32), t, xt)  # (B, 1, 1, 1)
    if prediction_type == "epsilon":
        return (xt - (1 - alpha_prod_t).sqrt() * model_output) / alpha_prod_t.sqrt().clamp_min(1e-8)  # (B, 3, R, R)
    if prediction_type == "v_prediction":
        return alpha_prod_t.sqrt() * xt - (1 - alpha_prod_t).sqrt() * model_output  # (B, 3, R, R)
    raise ConfigError(f"unknown prediction_type {prediction_type!r}; valid: epsilon, v_prediction")


def snr(schedule: ScheduleConfig | Mapping | SchedulerMixin | torch.Tensor | None = None) -> torch.Tensor:
    """Signal-to-noise ratio alpha-bar_t / (1 - alpha-bar_t) for every t."""
    alpha_prod_t = alphas_cumprod(schedule)  # (T,): every t
    return alpha_prod_t / (1 - alpha_prod_t)


def named_schedules(schedules=None) -> dict[str, object]:
    """{name: schedule} of a schedule, a list or mapping of them, or None (the cosine and linear schedules)."""
    if schedules is None:
        return {"squaredcos_cap_v2": ScheduleConfig(beta_schedule="squaredcos_cap_v2"),
                "linear": ScheduleConfig(beta_schedule="linear")}
    if isinstance(schedules, Mapping) and not any(k in schedules for k in _SCHEDULE_KEYS):
        return dict(schedules)
    if isinstance(schedules, (ScheduleConfig, SchedulerMixin, Mapping)):
        return {schedule_label(schedules): schedules}
    return {schedule_label(s): s for s in schedules}


def schedule_label(schedule) -> str:
    """A schedule's short name: its beta schedule, '(zero SNR)' added where its last SNR is 0."""
    kw = _schedule_kwargs(schedule)
    return kw.get("beta_schedule", "?") + (" (zero SNR)" if kw.get("rescale_betas_zero_snr") else "")
