"""Where a training step's time goes: a profile's UNet arithmetic against this CPU's own convolution speed.

    .venv/bin/python benchmarks/bench_step.py [--profile quick] [--config YAML|none] [--seconds 5] [--threads 2]

Answers "is the step rate limited by the arithmetic or by the code around it?" for the 20-minute budget. It
counts the forward operations of one image (convolutions and linear layers, via forward hooks; attention's two
matrix products are added from its shapes), times the real training step of `lab6.train` on random data
(`diffusion_loss`, backward, AdamW), then the same with what the loop adds (gradient clipping, the EMA
update, a batch drawn from a uint8 tensor), and a bare 3×3 convolution at the UNet's widest stage and a square
matrix product as this CPU's reference speeds. The achieved rate counts a step as 3× the forward operations
(backward ≈ 2× forward). Last, `torch.profiler` splits a few steps by operator.

S, the machine speed beside every time in this project, is its first step rate with no options: the quick net the
budgets were set on (S_REFERENCE, the multi-hot net shipped until 2026-12-07), not the profile's token net, which
trains at 0.73-0.80 of it (LOG.md, 2026-12-07); `--config none` times the quick profile as it is.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as every lab6 entry point, before torch loads
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

S_REFERENCE = C.REPO / "pretrained" / "quick-multihot" / "lab6_config.yaml"  # the quick recipe that S is measured on


def forward_flops(model, xt, t, y) -> float:
    """Multiply-adds × 2 of one forward pass: Conv2d and Linear layers, plus attention's QK^T and AV."""
    import torch
    from diffusers.models.attention_processor import Attention
    total = [0.0]

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total[0] += 2.0 * out.numel() * k
        elif isinstance(mod, torch.nn.Linear):
            total[0] += 2.0 * out.numel() * mod.in_features
        elif isinstance(mod, Attention):
            x = inp[0]  # (B, C, H, W) or (B, L, C)
            b, c = x.shape[0], x.shape[1] if x.ndim == 4 else x.shape[-1]
            n = x.shape[2] * x.shape[3] if x.ndim == 4 else x.shape[1]
            total[0] += 2.0 * 2 * b * n * n * c  # QK^T and AV over all heads

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, Attention))]
    with torch.no_grad():
        model(xt, t, y)
    for h in handles:
        h.remove()
    return total[0]


def rate(fn, seconds: float, items: int) -> float:
    """Items per second of fn() after two warm-up calls, timed for about `seconds`."""
    for _ in range(2):
        fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or n < 2:
        fn()
        n += 1
    return items * n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="training profile (default quick)")
    parser.add_argument("--config", help="a YAML over the profile (default for quick: S's reference net, "
                                         f"{S_REFERENCE.relative_to(C.REPO)}; 'none': the profile as it is)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--batch-size", type=int, default=0, help="batch size (default: the profile's)")
    parser.add_argument("--top", type=int, default=8, help="operators listed from the profiler (default 8)")
    args = parser.parse_args(argv)
    for name in ("seconds", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name}: expected > 0, got {getattr(args, name)}")
    if args.batch_size < 0:
        parser.error(f"--batch-size: expected >= 0 (0 = the profile's), got {args.batch_size}")

    import torch
    from diffusers.training_utils import EMAModel

    from lab6.config import load_config
    from lab6.model import build_model, count_parameters
    from lab6.schedules import alphas_cumprod
    from lab6.train import diffusion_loss, make_batch

    config = args.config or (str(S_REFERENCE) if args.profile == "quick" else "none")
    cfg = load_config(args.profile, None if config == "none" else Path(config))
    m, tr = cfg.model, cfg.train
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, r = args.batch_size or tr.batch_size, m.sample_size
    model = build_model(m)
    opt = torch.optim.AdamW(model.parameters(), lr=tr.lr)
    ema = EMAModel(model.parameters(), decay=tr.ema_decay, use_ema_warmup=tr.ema_warmup, foreach=True)
    ac = alphas_cumprod(cfg.schedule).float()  # (T,)
    gen = torch.Generator().manual_seed(0)
    images_u8 = torch.randint(0, 256, (4 * b, 3, r, r), dtype=torch.uint8)  # (N, 3, R, R)
    labels = (torch.rand(4 * b, 24, generator=gen) < 0.08).float()  # (N, 24)
    masks = torch.rand(4 * b, r, r, generator=gen) < 0.17 if tr.foreground_weight > 0 else None  # (N, R, R)
    x0, y, pw = make_batch(images_u8, labels, torch.arange(b), gen, tr.hflip, "cpu",
                           masks, tr.foreground_weight)  # (B, 3, R, R), (B, 24), (B, 1, R, R) | None

    def loss_of(x0, y, pw):
        return diffusion_loss(model, x0, y, ac, gen, prediction_type=cfg.schedule.prediction_type,
                              cond_drop_prob=tr.cond_drop_prob, min_snr_gamma=tr.min_snr_gamma,
                              timestep_sampling=tr.timestep_sampling, pixel_weight=pw)

    def network_step():
        loss_of(x0, y, pw).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def loop_step():
        idx = torch.randint(0, len(images_u8), (b,), generator=gen)  # (B,)
        xb, yb, pwb = make_batch(images_u8, labels, idx, gen, tr.hflip, "cpu", masks, tr.foreground_weight)
        loss_of(xb, yb, pwb).backward()
        if tr.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    t = torch.randint(0, len(ac), (b,))
    flops = forward_flops(model, x0, t, y) / b  # per image
    ch = max(m.block_out_channels)
    side = r // m.patch_size  # the UNet's top resolution
    conv = torch.nn.Conv2d(ch, ch, 3, padding=1)
    cx = torch.randn(b, ch, side, side, requires_grad=True)  # (B, C, S, S)
    conv_flops = 2.0 * b * ch * side * side * ch * 9

    def conv_step():
        conv(cx).sum().backward()

    a, bm = torch.randn(1024, 1024), torch.randn(1024, 1024)

    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, "
          f"{args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}")
    net_name = f"profile {args.profile}" + ("" if config == "none" else f" + {os.path.relpath(config)}")
    print(f"{net_name}: {count_parameters(model) / 1e6:.2f} M parameters, batch {b} at {r}px "
          f"(patch {m.patch_size}: the UNet runs at {side}x{side}); forward {flops / 1e6:.0f} MFLOP per image")
    net = rate(network_step, args.seconds, b)
    loop = rate(loop_step, args.seconds, b)
    net2 = rate(network_step, args.seconds, b)  # again: the machine's drift between the two
    conv_rate = rate(conv_step, args.seconds, conv_flops * 3) / 1e9
    mm_rate = rate(lambda: a @ bm, args.seconds, 2.0 * 1024**3) / 1e9
    net_mean = (net + net2) / 2
    achieved = 3 * flops * net_mean / 1e9
    print(f"{'measurement':<52} {'figure':>12}")
    rows = [
        ("training step (loss, backward, AdamW), img/s", f"{net:.1f} / {net2:.1f}"),
        ("+ batch from uint8, grad clip, EMA (the loop), img/s", f"{loop:.1f}"),
        ("what the loop adds, share of its step time", f"{max(0.0, 1 - loop / net_mean):.1%}"),
        ("achieved by the step, GFLOP/s (3x forward)", f"{achieved:.1f}"),
        (f"3x3 conv {ch}->{ch} at {side}x{side}, fwd+bwd, GFLOP/s", f"{conv_rate:.1f}"),
        ("1024x1024 matrix product, GFLOP/s", f"{mm_rate:.1f}"),
        ("step's rate / bare conv's rate", f"{achieved / conv_rate:.0%}"),
    ]
    for k, v in rows:
        print(f"{k:<52} {v:>12}")

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            loop_step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"share of self CPU time over 3 loop steps (top {args.top}):")
    for e in events[:args.top]:
        print(f"  {e.key:<50} {e.self_cpu_time_total / total:>6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(C.run_main(main))
