"""The headless pipeline behind `lab6 run` / `make run`: data, evaluator, notebooks, report."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .data import DATA_DIR, PROJECT_ROOT, CourseData, default_data_root
from .errors import CheckpointError, ConfigError, DataError, Lab6Error
from .io import atomic_path, check_writable_dir, ensure_writable_dir, write_json

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = (
    "01_data.ipynb",
    "02_forward_noising.ipynb",
    "03_training.ipynb",
    "04_sampling.ipynb",
    "05_results.ipynb",
)
REPORT_NOTEBOOK = "05_results.ipynb"


@dataclass
class RunConfig:
    """Options of one headless pipeline run (the papermill parameters every notebook shares)."""

    profile: str = "quick"
    data_root: str = ""  # "" = data/iclevr if it holds train.json, else data/synth
    run_dir: str = ""  # "" = outputs/<profile>
    device: str = ""  # "" = cuda if available, else cpu
    seed: int = 0
    force: bool = False
    synth_scenes: int = 6000  # scenes rendered when the synthetic dataset is missing
    max_steps: int = 0  # notebook 03's training steps; 0 = the profile's (quick: 1600, ~20 min on 2 cores)
    max_minutes: float = 0.0  # notebook 03's training time budget; 0 = the profile's (quick: 20); the first limit ends it
    ddpm_1000: bool = True  # notebook 04 compares DDPM-1000 too (quick: ~2 min for 32 images on a 2-core CPU)

    def resolved(self) -> "RunConfig":
        """A copy with the empty defaults filled in and paths made absolute."""
        data_root = Path(self.data_root) if self.data_root else default_data_root()
        run_dir = Path(self.run_dir) if self.run_dir else PROJECT_ROOT / "outputs" / self.profile
        return RunConfig(**{**asdict(self), "data_root": str(data_root.resolve()),
                            "run_dir": str(run_dir.resolve())})

    def notebook_parameters(self) -> dict:
        """The flat literals injected into each notebook's `parameters` cell."""
        return {"profile": self.profile, "data_root": self.data_root, "run_dir": self.run_dir,
                "device": self.device, "seed": self.seed, "max_steps": self.max_steps, "max_minutes": self.max_minutes,
                "ddpm_1000": self.ddpm_1000}


def ensure_data(cfg: RunConfig) -> CourseData:
    """Render the default synthetic dataset (data/synth) when it is missing; any other root must exist."""
    root = Path(cfg.data_root)
    if not (root / "train.json").exists():
        if root.resolve() != (DATA_DIR / "synth").resolve():
            hint = "copy the course's files there (see data/README.md)" if root.name == "iclevr" else \
                f"render one with `lab6 synth --out {root}`, or leave --data-root out to use data/synth"
            raise DataError(f"{root}: no train.json; {hint}")
        from .synth import write_dataset
        print(f"[data] rendering the synthetic dataset into {root} ({cfg.synth_scenes} scenes)", flush=True)
        write_dataset(root, scenes=cfg.synth_scenes, seed=cfg.seed)
    data = CourseData(root)
    data.check_images()
    return data


def ensure_evaluator(cfg: RunConfig) -> Path:
    """Find the evaluator for this data root (default synthetic data: the shipped one); for synthetic data of
    another renderer setting without one, render an all-pairs training set beside it (`<root>-evaluator/`, so
    the evaluator knows the pairs unseen_test asks for) and train the course's ResNet-18 on it, saved as
    `<root>/evaluator.pth`."""
    from .evaluator import find_evaluator, train_evaluator
    from .synth import write_dataset
    try:
        return find_evaluator(data_root=cfg.data_root)
    except CheckpointError:
        root = Path(cfg.data_root)
        if (root / "checkpoint.pth").exists() or not (root / ".synth.json").exists():
            raise
        eval_root = root.with_name(f"{root.name}-evaluator")
        print(f"[evaluator] none found; rendering its training set into {eval_root} and training it", flush=True)
        write_dataset(eval_root, scenes=cfg.synth_scenes, seed=cfg.seed + 1, all_pairs=True)
        train_evaluator(eval_root, out=root / "evaluator.pth", seed=cfg.seed, device=cfg.device or None)
        return find_evaluator(data_root=cfg.data_root)


def _fingerprint(notebook: Path, parameters: dict) -> str:
    h = hashlib.sha1(notebook.read_bytes())
    h.update(json.dumps(parameters, sort_keys=True).encode())
    return h.hexdigest()


def _completed(executed: Path) -> bool:
    """True when an executed notebook exists and papermill recorded no exception in it."""
    try:
        nb = json.loads(executed.read_text())
    except (OSError, ValueError):
        return False
    meta = nb.get("metadata", {}).get("papermill", {})
    return meta.get("exception") is False or (meta.get("exception") is None and bool(meta.get("end_time")))


def execute_notebook(name: str, cfg: RunConfig, out_dir: Path) -> Path:
    """Execute one notebook with papermill into out_dir; a failure names the notebook and the cell."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    source = NOTEBOOK_DIR / name
    declared = pm.inspect_notebook(str(source))
    params = {k: v for k, v in cfg.notebook_parameters().items() if k in declared}
    target = out_dir / name
    try:
        pm.execute_notebook(str(source), str(target), parameters=params, kernel_name="python3",
                            cwd=str(PROJECT_ROOT), progress_bar=sys.stderr.isatty(), log_output=False)
    except PapermillExecutionError as e:
        raise Lab6Error(f"notebooks/{name} failed in cell {e.exec_count or e.cell_index}: {e.ename}: "
                        f"{str(e.evalue).splitlines()[0] if e.evalue else ''}; the partly executed notebook "
                        f"is kept at {target}") from None
    return target


def write_report(executed: Path, report: Path) -> None:
    """Render the executed results notebook (outputs only, no code) as one self-contained HTML page."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(executed), as_version=4)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    with atomic_path(report) as tmp:
        tmp.write_text(body, encoding="utf-8")


def run_pipeline(cfg: RunConfig) -> Path:
    """Data -> evaluator -> notebooks 01..05 -> report.html; returns the run folder."""
    from .config import check_device

    cfg = cfg.resolved()
    check_device(cfg.device or None, "--device")
    if cfg.max_steps < 0:
        raise ConfigError(f"--max-steps: expected 0 (the profile's) or a positive number of steps, got {cfg.max_steps}")
    if not cfg.max_minutes >= 0:
        raise ConfigError(f"--max-minutes: expected 0 (the profile's) or a positive number of minutes, "
                          f"got {cfg.max_minutes}")
    check_writable_dir(cfg.run_dir)
    t0 = time.time()
    ensure_data(cfg)
    ensure_evaluator(cfg)
    run_dir = ensure_writable_dir(cfg.run_dir)
    nb_dir = ensure_writable_dir(run_dir / "notebooks")
    state_path = run_dir / "run_state.json"
    try:
        state = json.loads(state_path.read_text()) if state_path.exists() and not cfg.force else {}
    except (OSError, ValueError):
        state = {}  # a corrupt state file only means every notebook runs again
    rerun = cfg.force
    for i, name in enumerate(NOTEBOOKS, 1):
        fp = _fingerprint(NOTEBOOK_DIR / name, cfg.notebook_parameters())
        done = state.get(name) == fp and _completed(nb_dir / name)
        if done and not rerun:
            print(f"[{i}/{len(NOTEBOOKS)}] {name}: already complete, skipped (use --force to re-run)", flush=True)
            continue
        rerun = True  # everything after a re-executed notebook depends on it
        print(f"[{i}/{len(NOTEBOOKS)}] {name}: running ...", flush=True)
        t = time.time()
        state.pop(name, None)
        write_json(state_path, state)
        execute_notebook(name, cfg, nb_dir)
        state[name] = fp
        write_json(state_path, state)
        print(f"[{i}/{len(NOTEBOOKS)}] {name}: done in {time.time() - t:.0f} s", flush=True)
    write_report(nb_dir / REPORT_NOTEBOOK, run_dir / "report.html")
    print(f"[report] {run_dir / 'report.html'} ({time.time() - t0:.0f} s in all)", flush=True)
    return run_dir


def main_run(args) -> int:
    """`lab6 run`: the whole pipeline, headless."""
    cfg = RunConfig(profile=args.profile, data_root=args.data_root or "", run_dir=args.out or "",
                    device=args.device or "", force=args.force, max_steps=args.max_steps,
                    max_minutes=args.max_minutes, ddpm_1000=not args.no_ddpm_1000)
    run_pipeline(cfg)
    return 0


def record_metrics(run_dir: str | Path, notebook: str, metrics: dict) -> Path:
    """Merge `metrics` into run_dir/metrics.json under the notebook's key (read back by tests and the report)."""
    path = Path(run_dir) / "metrics.json"
    allm = json.loads(path.read_text()) if path.exists() else {}
    allm[notebook] = {**allm.get(notebook, {}), **metrics}
    write_json(path, allm)
    return path


PRETRAINED_DIR = PROJECT_ROOT / "pretrained"


def run_model(profile: str, run_dir: str | Path, model: str = "") -> tuple[Path, str]:
    """(model folder, where it came from) for notebooks 04-05: an explicit path, the model shipped for the
    profile in pretrained/<profile>/, else the model trained in this run (run_dir/train)."""
    if model:
        return Path(model), f"given: {model}"
    shipped = PRETRAINED_DIR / profile
    if (shipped / "model_index.json").exists():
        return shipped, f"shipped model pretrained/{profile} (trained with lab6 train; see its TRAINING.md)"
    return Path(run_dir) / "train", f"trained live in this run ({Path(run_dir) / 'train'})"
