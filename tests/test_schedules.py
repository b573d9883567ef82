"""Noise schedules: q_sample, v and x0 against diffusers, alphas_cumprod's ends, the schedule figures."""
from __future__ import annotations

import matplotlib
import pytest
import torch
from diffusers import DDPMScheduler

from lab6.config import load_config
from lab6.schedules import alphas_cumprod, make_scheduler, predict_x0, q_sample, v_target

matplotlib.use("Agg")


@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "linear"])
def test_q_sample_matches_diffusers(beta_schedule):
    cfg = load_config("tiny", schedule={"beta_schedule": beta_schedule}).schedule
    sched = make_scheduler(cfg, "ddpm")
    assert isinstance(sched, DDPMScheduler) and sched.config.num_train_timesteps == 1000
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 500, 999])
    assert torch.equal(q_sample(x0, t, eps, cfg), sched.add_noise(x0, eps, t))
    assert torch.equal(v_target(x0, t, eps, cfg), sched.get_velocity(x0, eps, t))
    xt = q_sample(x0, t, eps, cfg)
    # eps -> x0 divides by sqrt(alphas_cumprod), which is ~5e-5 at t = 999: compare t < 999 only
    assert torch.allclose(predict_x0(xt[:3], t[:3], eps[:3], "epsilon", cfg), x0[:3], atol=1e-4)
    assert torch.allclose(predict_x0(xt, t, v_target(x0, t, eps, cfg), "v_prediction", cfg), x0, atol=1e-5)



def test_alphas_cumprod_ends():
    cos = alphas_cumprod(load_config("tiny").schedule)
    assert len(cos) == 1000 and 0.99 < cos[0] <= 1 and cos[-1] < 1e-8  # 2.4e-9: the FINDINGS pitfall
    lin = alphas_cumprod(load_config("tiny", schedule={"beta_schedule": "linear"}).schedule)
    assert 3e-5 < lin[-1] < 5e-5
    zsnr = alphas_cumprod(load_config("tiny", schedule={"zero_terminal_snr": True}).schedule)
    assert zsnr[-1] == 0



def test_plots_return_figures():
    from lab6.plots import plot_alphas_cumprod, plot_forward_process
    fig = plot_alphas_cumprod()
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    fig2 = plot_forward_process(torch.zeros(3, 16, 16), timesteps=(0, 500, 999),
                                generator=torch.Generator().manual_seed(0))
    assert len(fig2.axes) == 6
    matplotlib.pyplot.close("all")
