"""OpenMP wait settings: training-step rates of the evaluator and the quick UNet, alone and two jobs at once.

    .venv/bin/python benchmarks/bench_threads.py [--seconds 8] [--settings PASSIVE,ACTIVE,spin=100000,...]

Each setting runs in fresh processes (libgomp reads its environment when torch loads): one process alone, then
two at once (a CPU shared with another torch job). `PASSIVE` is what `import lab6` sets unless
OMP_WAIT_POLICY is already set; `ACTIVE` spins; `spin=N` keeps lab6's PASSIVE but sets GOMP_SPINCOUNT=N,
which overrides it: idle threads spin N times, then sleep
(N = 300000 is libgomp's default when nothing is set). Prints images per second of a
training step (batch 64, 2 threads): the evaluator at width 32 and 64 px, the quick profile's UNet.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = "PASSIVE,ACTIVE,spin=300000,spin=100000,spin=10000,spin=1000"


def environment(setting: str) -> dict[str, str]:
    """The process environment of one setting (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(REPO)
    if setting in ("PASSIVE", "ACTIVE"):
        env["OMP_WAIT_POLICY"] = setting
    elif setting.startswith("spin=") and setting.removeprefix("spin=").isdigit():
        env["GOMP_SPINCOUNT"] = setting.removeprefix("spin=")
    else:
        raise SystemExit(f"--settings: unknown setting {setting!r}; expected PASSIVE, ACTIVE or spin=N")
    return env


def measure(seconds: float) -> dict[str, float]:
    """Images per second of the two training steps in this process."""
    import lab6  # noqa: F401, I001  (sets OMP_WAIT_POLICY before torch loads, as every entry point does)
    import torch
    import torch.nn.functional as F

    from lab6.config import load_config
    from lab6.evaluator import ResNet18
    from lab6.model import build_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    ev = ResNet18(width=32)
    ev_opt = torch.optim.AdamW(ev.parameters(), 2e-3)
    x, y = torch.randn(64, 3, 64, 64), (torch.rand(64, 24) < 0.1).float()   # (B, 3, 64, 64), (B, 24)
    cfg = load_config("quick")
    unet = build_model(cfg.model)
    unet_opt = torch.optim.AdamW(unet.parameters(), 2e-3)
    r = cfg.model.sample_size
    xt, t = torch.randn(64, 3, r, r), torch.randint(0, 1000, (64,))         # (B, 3, R, R), (B,)

    def ev_step():
        loss = F.binary_cross_entropy_with_logits(ev.logits(x), y)
        ev_opt.zero_grad()
        loss.backward()
        ev_opt.step()

    def unet_step():
        loss = F.mse_loss(unet(xt, t, y), xt)
        unet_opt.zero_grad()
        loss.backward()
        unet_opt.step()

    rates = {}
    for name, step in (("evaluator", ev_step), ("quick_unet", unet_step)):
        for _ in range(2):
            step()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            step()
            n += 1
        rates[name] = 64 * n / (time.perf_counter() - t0)
    return rates


def run_setting(setting: str, copies: int, seconds: float) -> list[dict[str, float]]:
    """Rates of `copies` processes started together under `setting`."""
    cmd = [sys.executable, __file__, "--child", "--seconds", str(seconds)]
    procs = [subprocess.Popen(cmd, env=environment(setting), stdout=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(copies)]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"setting {setting}: the measuring process failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per step kind (default 8)")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"comma-separated (default {DEFAULT_SETTINGS})")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds: expected > 0, got {args.seconds}")
    if args.child:
        print(json.dumps(measure(args.seconds)))
        return 0
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        environment(s)  # a bad setting stops here, before any measuring
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; img/s of one training step, batch 64, "
          f"2 threads per process")
    print(f"{'setting':<14} {'evaluator alone':>16} {'UNet alone':>11} {'evaluator, 2 jobs':>18} {'UNet, 2 jobs':>13}")
    for s in settings:
        alone = run_setting(s, 1, args.seconds)[0]
        pair = run_setting(s, 2, args.seconds)
        ev2 = "+".join(f"{p['evaluator']:.0f}" for p in pair)
        unet2 = "+".join(f"{p['quick_unet']:.0f}" for p in pair)
        print(f"{s:<14} {alone['evaluator']:>16.0f} {alone['quick_unet']:>11.0f} {ev2:>18} {unet2:>13}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
