"""The offline path: `make offline-run` installs the wheelhouse (.whl/, `make wheelhouse`) with no network into a
venv that has torch and diffusers but nothing of Jupyter, as on a GPU box, and runs the workbook."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
WHEELHOUSE = REPO / ".whl"


def share_installed(names: list[str], target: Path) -> None:
    """Symlink the installed distributions `names` and everything they require into folder `target`."""
    seen, todo = set(), list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # required only on other platforms (torch's CUDA libraries on a CPU build)
        todo += [re.match(r"[A-Za-z0-9._-]+", r).group() for r in dist.requires or [] if "extra ==" not in r]
        for top in {f.parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            if not (target / top).exists():
                (target / top).symlink_to(Path(dist.locate_file(top)))


@pytest.fixture
def box(tmp_path) -> Path:
    """A venv whose Python sees this venv's torch and diffusers (and what they need) but no Jupyter package."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    shared = tmp_path / "torch-and-diffusers"
    shared.mkdir()
    share_installed(["torch", "diffusers"], shared)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "torch-and-diffusers.pth").write_text(f"{shared}\n")
    return venv


def tiny_data(root: Path) -> Path:
    """A 12-scene synthetic dataset with a tiny (quickly trained) evaluator beside it, as tests/test_pipeline.py's."""
    from lab6.evaluator_train import EvaluatorTrainConfig, train_evaluator
    from lab6.synth import write_dataset
    write_dataset(root, scenes=12, seed=0, workers=1, progress=False)
    train_evaluator(root, config=EvaluatorTrainConfig(epochs=1, width=4, max_minutes=0.5, val_images=4,
                                                       batch_size=16, threads=1), progress=False)
    return root


def _offline_env() -> dict[str, str]:
    """This environment without pip's settings (an index, find-links), and with no network for pip."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "OMP_NUM_THREADS": "1",
                  "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def test_offline_run_installs_the_wheelhouse_and_runs_the_workbook(box, tmp_path):
    if not any(WHEELHOUSE.glob("papermill-*.whl")):
        pytest.skip(".whl/ has not been built: run `make wheelhouse` (needs the network; 61 MiB, 15-30 s)")
    py = box / "bin" / "python"
    probe = "import torch, diffusers\nfor m in ('papermill', 'nbclient', 'ipykernel', 'lab6'):\n" \
            "    try:\n        __import__(m)\n        raise SystemExit(m + ' is already there')\n" \
            "    except ImportError:\n        pass"
    before = subprocess.run([py, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=_offline_env())
    assert before.returncode == 0, before.stdout + before.stderr
    data, out = tiny_data(tmp_path / "ds"), tmp_path / "out"
    args = f"--profile tiny --data-root {data} --out {out} --device cpu --max-minutes 0.2 --no-ddpm-1000"
    t0 = time.monotonic()
    r = subprocess.run(["make", "offline-run", f"VENV={box}", f"OFFLINE_ARGS={args}"], cwd=REPO, capture_output=True,
                       text=True, env=_offline_env(), timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "report.html").is_file() and len(list((out / "images" / "test").glob("*.png"))) == 32
    print(f"make offline-run: {time.monotonic() - t0:.0f} s")
