"""What `lab6 run` prints while a notebook executes: each code cell as it starts, and training's step, loss and ETA."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import yaml
from jupyter_client.manager import AsyncKernelManager
from papermill.engines import NBClientEngine, papermill_engines
from traitlets import default

ENGINE = "lab6"
HEADLESS_ENV = "LAB6_HEADLESS"  # "1" in the kernels `lab6 run` starts: no frontend draws their widgets


def text_progress_when_headless() -> bool:
    """In a kernel that `lab6 run` started, make tqdm.auto the plain-text tqdm; returns whether it did.

    tqdm.auto draws an ipywidgets bar in a kernel; with no frontend (papermill) the executed notebook keeps only
    the widget's first text frame, `0%`, since its updates travel as widget messages that are not saved. Text bars
    are saved as they end. Call it before the modules that draw bars are imported.
    """
    if os.environ.get(HEADLESS_ENV) != "1":
        return False
    import tqdm.auto
    import tqdm.autonotebook
    import tqdm.std

    for module in (tqdm.auto, tqdm.autonotebook):
        module.tqdm, module.trange = tqdm.std.tqdm, tqdm.std.trange
    return True


class IPCKernelManager(AsyncKernelManager):
    """A local kernel over IPC sockets: no network port, so no 'unencrypted TCP' warning before every notebook."""

    @default("transport")
    def _default_transport(self):
        return "ipc"


def first_code_line(source: str, width: int = 70) -> str:
    """The first non-comment line of a cell, cut to `width` characters."""
    lines = [s.strip() for s in source.splitlines() if s.strip() and not s.lstrip().startswith("#")]
    line = lines[0] if lines else "(comments only)"
    return line if len(line) <= width else line[: width - 1] + "…"


class CellPrinter:
    """Prints `[i/n] notebook · cell c/m: <first line>` when a code cell starts."""

    def __init__(self, prefix: str, echo=print):
        self.prefix, self.echo = prefix, echo

    def __call__(self, nb, cell, cell_index: int) -> None:
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        if cell.cell_type == "code" and cell_index in code:
            tags = cell.metadata.get("tags", [])
            what = ("(parameters of this run)" if "injected-parameters" in tags else
                    "(the notebook's default parameters)" if "parameters" in tags else first_code_line(cell.source))
            self.echo(f"{self.prefix} · cell {code.index(cell_index) + 1}/{len(code)}: {what}", flush=True)


class ProgressEngine(NBClientEngine):
    """papermill's nbclient engine, calling `on_cell(nb, cell, index)` as each cell starts; its kernels run with
    LAB6_HEADLESS=1 (no frontend: text progress bars, see text_progress_when_headless)."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, on_cell=None, **kwargs):
        if on_cell is not None:
            start = nb_man.cell_start

            def cell_start(cell, cell_index=None, **kw):
                on_cell(nb_man.nb, cell, cell_index)
                return start(cell, cell_index, **kw)

            nb_man.cell_start = cell_start
        before = os.environ.get(HEADLESS_ENV)
        os.environ[HEADLESS_ENV] = "1"  # the kernel inherits it: see text_progress_when_headless
        try:
            return super().execute_managed_notebook(nb_man, kernel_name, kernel_manager_class=IPCKernelManager,
                                                    **kwargs)
        finally:
            if before is None:
                os.environ.pop(HEADLESS_ENV, None)
            else:
                os.environ[HEADLESS_ENV] = before


papermill_engines.register(ENGINE, ProgressEngine)


def eta_seconds(step: int, steps_per_s: float, max_steps: int, elapsed: float, max_minutes: float) -> float:
    """Seconds left until the first of the step limit and the time limit, at `steps_per_s`."""
    by_steps = (max_steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
    by_time = max_minutes * 60 - elapsed if max_minutes else float("inf")
    return max(0.0, min(by_steps, by_time))


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


class TrainingWatch:
    """A thread that reads a training run's metrics.jsonl every `every` seconds and prints step / loss / ETA."""

    def __init__(self, run: str | Path, every: float = 20.0, echo=print):
        self.run, self.every, self.echo = Path(run), every, echo
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._seen = 0  # bytes of metrics.jsonl already read
        self._last: tuple[int, float] | None = None  # (step, elapsed_s) of the previous printed line

    def __enter__(self):
        self._seen = self._size()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def _size(self) -> int:
        f = self.run / "metrics.jsonl"
        return f.stat().st_size if f.exists() else 0

    def _limits(self) -> tuple[int, float, int]:
        """(max_steps, max_minutes, batch_size) from the run's config.yaml; zeros where unknown."""
        try:
            t = yaml.safe_load((self.run / "config.yaml").read_text())["train"]
            return int(t["max_steps"]), float(t.get("max_minutes") or 0), int(t.get("batch_size") or 0)
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
            return 0, 0.0, 0

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()

    def poll(self) -> str | None:
        """Read the records written since the last poll and print one line for the latest; returns it."""
        f = self.run / "metrics.jsonl"
        try:
            with open(f, "rb") as fh:
                fh.seek(self._seen)
                chunk = fh.read()
        except OSError:
            return None
        lines = chunk.decode("utf-8", "replace").split("\n")
        self._seen += len(chunk) - len(lines[-1].encode())  # keep a half-written last line for the next poll
        steps = []
        for line in lines[:-1]:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "loss" in rec and "step" in rec:
                steps.append(rec)
        if not steps:
            return None
        rec = steps[-1]
        step, elapsed = int(rec["step"]), float(rec.get("elapsed_s", 0))
        max_steps, max_minutes, batch = self._limits()
        if self._last is not None and elapsed > self._last[1] and step > self._last[0]:
            rate = (step - self._last[0]) / (elapsed - self._last[1])  # steps/s since the previous line
        elif elapsed > 0:
            rate = step / elapsed
        else:
            rate = rec.get("img_per_s", 0) / batch if batch else 0.0
        self._last = (step, elapsed)
        msg = f"    training: step {step}" + (f"/{max_steps}" if max_steps else "") + f", loss {rec['loss']:.4f}"
        if "img_per_s" in rec:
            msg += f", {rec['img_per_s']:.0f} img/s"
        if max_steps and (rate > 0 or max_minutes):
            msg += f", about {_clock(eta_seconds(step, rate, max_steps, elapsed, max_minutes))} left"
        self.echo(msg, flush=True)
        return msg
