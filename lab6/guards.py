"""Guards of a training run: stop cleanly on Ctrl-C / SIGTERM, stop on a NaN loss, warn when the loss spikes."""
from __future__ import annotations

import math
import signal
from contextlib import contextmanager
from pathlib import Path

from .errors import TrainingError


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


class LossSpikeWatch:
    """Warns once per episode when the smoothed loss climbs above `factor` x its lowest value: a run can diverge
    without ever reaching NaN, its loss settling an order of magnitude above where it was.

    The loss is smoothed by an exponential moving average over about `tau` steps, fed with each logged window's
    mean (so log_every does not change it), and watched from `after` steps on (after the LR warm-up). The default
    factor sits between healthy runs, which stay close to their lowest smoothed loss, and diverged ones, which
    rise tenfold or more (the runs behind it: benchmarks/LOG.md)."""

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
