"""The headless pipeline behind `lab6 run` / `make run`: data, evaluator, notebooks, report."""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import papermill as pm
from papermill.exceptions import PapermillExecutionError

from .checkpoints import EXPORT_DIR
from .config import (
    DEFAULT_PROFILE,
    PROFILES,
    SAMPLERS,
    Config,
    check_device,
    check_finite_fields,
    config_from_dict,
    load_config,
    read_yaml,
)
from .data import DATA_DIR, PROJECT_ROOT, CourseData, default_data_root, is_synthetic
from .errors import CheckpointError, ConfigError, DataError, Lab6Error
from .evaluator import find_evaluator, is_default_synth
from .evaluator_train import train_evaluator
from .io import check_writable_dir, ensure_writable_dir, write_json
from .progress import ENGINE, CellPrinter, TrainingWatch
from .report import write_report
from .synth import write_dataset

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = (
    "01_data.ipynb",
    "02_forward_noising.ipynb",
    "03_training.ipynb",
    "04_sampling.ipynb",
    "05_results.ipynb",
)
TRAINING_NOTEBOOK = "03_training.ipynb"
KERNEL_START_SECONDS = 300  # a kernel may take minutes to answer on a small CPU that another job keeps busy
MODEL_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
VALID_MODEL = (f"expected a `lab6 train` export holding model_index.json, lab6_config.yaml and {MODEL_WEIGHTS} "
               f"(such as pretrained/quick or <run>/{EXPORT_DIR})")
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # pickled weights: loading them can run code


@dataclass
class RunConfig:
    """Options of one headless pipeline run (the papermill parameters the notebooks share); None = the default."""

    profile: str = DEFAULT_PROFILE
    data_root: str | None = None  # data/iclevr if it holds train.json, else data/synth
    run_dir: str | None = None  # outputs/<profile>
    device: str | None = None  # cuda if available, else cpu
    seed: int = 0
    force: bool = False
    synth_scenes: int = 6000  # scenes rendered when the synthetic dataset is missing
    max_steps: int | None = None  # notebook 03's training steps (the profile's)
    max_minutes: float | None = None  # notebook 03's time budget (the profile's); the first limit ends training
    sampler: str | None = None  # notebooks 04-05 (the model's)
    steps: int | None = None  # sampling steps in notebooks 04-05 (the model's)
    guidance: float | None = None  # guidance scale in notebooks 04-05 (the model's); 1 = no guidance
    ddpm_1000: bool = True  # notebook 04 compares DDPM-1000 too (quick: ~2 min for 32 images on a 2-core CPU)
    model: str | None = None  # a given export: notebooks 04-05 grade it, notebook 03 (training) is skipped
    init_from: str | None = None  # notebook 03's start: an export, "none" (random weights) or None (the profile's)
    recipe: str | None = None  # notebook 03's training YAML over the profile (None: the profile's for its start)

    def validate(self) -> RunConfig:
        """Check every option once; a ConfigError names the command-line option."""
        check_finite_fields(self, lambda name: "--" + name.replace("_", "-"))
        if self.profile not in PROFILES:
            raise ConfigError(f"--profile: expected one of {', '.join(PROFILES)}, got {self.profile!r}")
        check_device(self.device, "--device")
        for opt, value in (("--max-steps", self.max_steps), ("--steps", self.steps)):
            if value is not None and not (isinstance(value, int) and value > 0):
                raise ConfigError(f"{opt}: expected a positive whole number, got {value}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"--max-minutes: expected a positive number of minutes, got {self.max_minutes}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.guidance is not None and not self.guidance >= 0:
            raise ConfigError(f"--guidance: expected a scale >= 0 (1 = no guidance), got {self.guidance}")
        if self.init_from is not None and self.init_from != "none":
            given_model(self.init_from, "--init-from")
        if self.recipe is not None:
            load_config(self.profile, self.recipe)  # a ConfigError names the file and the field
        return self

    def resolved(self) -> RunConfig:
        """A copy with the data root and run folder filled in and made absolute; with a given model, its folder
        (checked) and its profile."""
        given = {}
        if self.model is not None:
            folder, cfg = given_model(self.model)
            given = {"model": str(folder.resolve()), "profile": cfg.profile}
        profile = given.get("profile", self.profile)
        data_root = Path(self.data_root) if self.data_root else default_data_root()
        run_dir = Path(self.run_dir) if self.run_dir else PROJECT_ROOT / "outputs" / profile
        start = training_start(profile, data_root, self.init_from)
        recipe = Path(self.recipe) if self.recipe else training_recipe(profile, start)
        return RunConfig(**{**asdict(self), **given, "data_root": str(data_root.resolve()),
                            "run_dir": str(run_dir.resolve()), "init_from": str(start.resolve()) if start else "none",
                            "recipe": str(recipe.resolve()) if recipe else None})

    def notebooks(self) -> tuple[str, ...]:
        """The notebooks this run executes: all five, or all but training for a given model."""
        return tuple(n for n in NOTEBOOKS if not (self.model and n == TRAINING_NOTEBOOK))

    def notebook_parameters(self) -> dict:
        """The flat literals injected into each notebook's `parameters` cell (papermill passes None as None)."""
        return {"profile": self.profile, "data_root": self.data_root, "run_dir": self.run_dir,
                "device": self.device, "seed": self.seed, "max_steps": self.max_steps, "max_minutes": self.max_minutes,
                "sampler": self.sampler, "steps": self.steps, "guidance": self.guidance, "ddpm_1000": self.ddpm_1000,
                "model": self.model, "init_from": self.init_from, "recipe": self.recipe}


def given_model(path: str | Path, option: str = "--model") -> tuple[Path, Config]:
    """The export that `--model` (or `option`) names (a run folder: its pipeline/) and its saved config; a bad one
    fails here, naming the folder and what a valid one holds."""
    folder = Path(path)
    if (folder / EXPORT_DIR / "model_index.json").is_file():
        folder = folder / EXPORT_DIR
    if not folder.is_dir():
        raise CheckpointError(f"{option} {folder}: no such folder; {VALID_MODEL}")
    missing = [name for name in ("model_index.json", "lab6_config.yaml") if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{option} {folder}: not a lab6 export (no {' or '.join(missing)}); {VALID_MODEL}")
    if not (folder / MODEL_WEIGHTS).is_file():
        unsafe = sorted(p.name for p in (folder / "unet").glob("*") if p.suffix in UNSAFE_SUFFIXES)
        held = f"holds only {', '.join(unsafe)} (pickled: loading it could run code)" if unsafe else "holds no weights"
        raise CheckpointError(f"{option} {folder}: unet/ {held}; lab6 reads safetensors weights only; {VALID_MODEL}")
    try:
        return folder, config_from_dict(read_yaml(folder / "lab6_config.yaml"))
    except ConfigError as e:
        raise CheckpointError(f"{option} {folder}: unreadable config ({e}); {VALID_MODEL}") from None


def ensure_data(cfg: RunConfig) -> CourseData:
    """Render the default synthetic dataset (data/synth) when it is missing; any other root must exist."""
    root = Path(cfg.data_root)
    if not (root / "train.json").exists():
        if root.resolve() != (DATA_DIR / "synth").resolve():
            hint = "copy the course's files there (see data/README.md)" if root.name == "iclevr" else \
                f"render one with `lab6 synth --out {root}`, or leave --data-root out to use data/synth"
            raise DataError(f"{root}: no train.json; {hint}")
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
    try:
        return find_evaluator(data_root=cfg.data_root)
    except CheckpointError:
        root = Path(cfg.data_root)
        if (root / "checkpoint.pth").exists() or not is_synthetic(root):
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


def execute_notebook(name: str, cfg: RunConfig, out_dir: Path, prefix: str = "") -> Path:
    """Execute one notebook with papermill into out_dir, printing each cell as it starts; a failure names the
    notebook and the cell."""
    source = NOTEBOOK_DIR / name
    declared = pm.inspect_notebook(str(source))
    params = {k: v for k, v in cfg.notebook_parameters().items() if k in declared}
    target = out_dir / name
    try:
        pm.execute_notebook(str(source), str(target), parameters=params, kernel_name="python3", engine_name=ENGINE,
                            on_cell=CellPrinter(prefix or name), cwd=str(PROJECT_ROOT), progress_bar=False,
                            log_output=False, start_timeout=KERNEL_START_SECONDS)
    except PapermillExecutionError as e:
        raise Lab6Error(f"notebooks/{name} failed in cell {e.exec_count or e.cell_index}: {e.ename}: "
                        f"{str(e.evalue).splitlines()[0] if e.evalue else ''}; the partly executed notebook "
                        f"is kept at {target}") from None
    return target


def run_pipeline(cfg: RunConfig) -> Path:
    """Data -> evaluator -> notebooks 01..05 -> report.html (+ report.pdf with Chromium); returns the run folder."""

    cfg = cfg.validate().resolved()
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
    record_run(run_dir, cfg)
    for i, name in enumerate(NOTEBOOKS, 1):
        prefix = f"[{i}/{len(NOTEBOOKS)}] {name}"
        if name not in cfg.notebooks():
            print(f"{prefix}: skipped (the model is given: {cfg.model})", flush=True)
            continue
        fp = _fingerprint(NOTEBOOK_DIR / name, cfg.notebook_parameters())
        done = state.get(name) == fp and _completed(nb_dir / name)
        if done and not rerun:
            print(f"{prefix}: already complete, skipped (use --force to re-run)", flush=True)
            continue
        rerun = True  # everything after a re-executed notebook depends on it
        print(f"{prefix}: running ...", flush=True)
        t = time.time()
        state.pop(name, None)
        write_json(state_path, state)
        with TrainingWatch(run_dir / "train") if name == TRAINING_NOTEBOOK else contextlib.nullcontext():
            execute_notebook(name, cfg, nb_dir, prefix)
        state[name] = fp
        write_json(state_path, state)
        print(f"{prefix}: done in {time.time() - t:.0f} s", flush=True)
    for path in write_report(run_dir, cfg.data_root):
        print(f"[report] {path}", flush=True)
    print(f"[done] {run_dir} ({time.time() - t0:.0f} s in all)", flush=True)
    return run_dir


def record_run(run_dir: Path, cfg: RunConfig) -> None:
    """metrics.json's `run`: the given model (None: trained live) and the notebooks run; a given model also drops
    an earlier run's training record, which would otherwise claim this run trained."""
    path = run_dir / "metrics.json"
    allm = json.loads(path.read_text()) if path.exists() else {}
    if cfg.model:
        allm.pop("03_training", None)
    allm["run"] = {"model": cfg.model, "profile": cfg.profile, "notebooks": list(cfg.notebooks())}
    write_json(path, allm)


def record_metrics(run_dir: str | Path, notebook: str, metrics: dict) -> Path:
    """Merge `metrics` into run_dir/metrics.json under the notebook's key (read back by tests and the report)."""
    path = Path(run_dir) / "metrics.json"
    allm = json.loads(path.read_text()) if path.exists() else {}
    allm[notebook] = {**allm.get(notebook, {}), **metrics}
    write_json(path, allm)
    return path


PRETRAINED_DIR = PROJECT_ROOT / "pretrained"
CONFIG_DIR = PROJECT_ROOT / "configs"


def training_start(profile: str, data_root: str | Path, init_from: str | None = None) -> Path | None:
    """The weights notebook 03 starts from: `init_from` (an export; "none": random weights) or the profile's
    default. The quick profile fine-tunes its shipped model on data other than the default renders (the course's
    images, a second look), so a CPU's budget gives a model of those images; elsewhere, and for full and seed,
    training starts from random weights. A root without train.json yet is one `lab6 run` renders: default renders."""
    if init_from == "none":
        return None
    if init_from is not None:
        return given_model(init_from, "--init-from")[0]
    shipped = PRETRAINED_DIR / profile
    other_data = (Path(data_root) / "train.json").exists() and not is_default_synth(data_root)
    if profile == "quick" and (shipped / "model_index.json").exists() and other_data:
        return shipped
    return None


def training_recipe(profile: str, start: Path | None) -> Path | None:
    """Notebook 03's YAML over the profile: configs/<profile>-finetune.yaml from a trained model,
    configs/<profile>-live.yaml from random weights, when the profile has one (None: the profile as it is)."""
    recipe = CONFIG_DIR / f"{profile}-{'finetune' if start is not None else 'live'}.yaml"
    return recipe if recipe.exists() else None


def run_model(profile: str, run_dir: str | Path, model: str | None = None,
              data_root: str | Path | None = None) -> tuple[Path, str]:
    """(model folder, where it came from) for notebooks 04-05: an explicit path; for the quick profile on the default
    synthetic data the shipped pretrained/quick/ (a CPU's live run is a lesson, not a model); else the model trained
    in this run (run_dir/train), which a full run on a GPU is there to make."""
    if model:
        return Path(model), f"given: {model}"
    shipped = PRETRAINED_DIR / profile
    default_data = is_default_synth(data_root or default_data_root())
    if profile == "quick" and (shipped / "model_index.json").exists() and default_data:
        return shipped, f"shipped model pretrained/{profile} (trained with lab6 train; see its TRAINING.md)"
    return Path(run_dir) / "train", f"trained live in this run ({Path(run_dir) / 'train'})"
