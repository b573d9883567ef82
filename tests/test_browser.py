"""The notebooks' widgets in a real JupyterLab, driven by headless Chromium through playwright.

A module fixture renders a tiny synthetic dataset and trains a tiny model with the CLI; another starts
JupyterLab on a free 127.0.0.1 port with a token, serving a temp folder that holds parameterised copies of
notebooks 02 and 04 set to the `lab6` kernel. Notebook 02 runs whole; notebook 04 is a trimmed copy that keeps
only the setup, parameters and imports cells and the picker's cell (the rest samples every test file and
compares samplers, minutes on a CPU). The test runs each through JupyterLab's own "run all cells" command, then
drags the t slider and checks that the image changed, and picks labels, presses Generate and checks the images
appeared. Screenshots of every step go to the test's tmp_path.

Needs a Chromium (Debian's `chromium`, or the binary named by $LAB6_CHROMIUM; .ci/run installs it) and the
`playwright` package (the `test` extra); without either the test reports itself skipped.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from lab6.run import NOTEBOOK_DIR
from tests.conftest import REPO

pytestmark = pytest.mark.slow

KERNEL = "lab6"
SERVER_START_S = 120     # JupyterLab up and answering
NOTEBOOK_RUN_S = 240     # kernel start plus every cell of a (trimmed) notebook
WIDGET_S = 60            # a widget's reaction to one input
ERROR_MIME = "application/vnd.jupyter.stderr"


def _chromium() -> str:
    for candidate in (os.environ.get("LAB6_CHROMIUM"), "chromium", "chromium-browser"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    pytest.skip("no Chromium for the browser test: `apt-get install chromium` (or set LAB6_CHROMIUM)")


def _env() -> dict:
    """The kernel imports lab6 from this checkout, one thread each (a shared 2-core machine)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")


def _cli(*args) -> None:
    r = subprocess.run([sys.executable, "-m", "lab6", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=_env())
    assert r.returncode == 0, f"lab6 {' '.join(map(str, args))} failed:\n{r.stdout[-1500:]}{r.stderr[-2500:]}"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, exported pipeline): 4 default synthetic scenes (the shipped evaluator reads them) and a tiny
    model trained for 2 steps."""
    root = tmp_path_factory.mktemp("browser_model")
    _cli("synth", "--out", root / "ds", "--scenes", 4, "--workers", 1)
    _cli("train", "--profile", "tiny", "--data", root / "ds", "--out", root / "run", "--max-steps", 2,
         "--device", "cpu")
    return root / "ds", root / "run" / "pipeline"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SETTINGS = {  # no news toast over the widgets; every cell in the DOM (no windowing)
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        '{"fetchNews": "false", "checkForUpdates": false}',
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
}


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """(base URL, token, served folder) of a JupyterLab on 127.0.0.1; stopped at teardown whatever happens
    (module scope: its kernels do not stay loaded through the rest of the session)."""
    from jupyter_client.kernelspec import find_kernel_specs
    if KERNEL not in find_kernel_specs():
        pytest.fail(f"no `{KERNEL}` Jupyter kernel: `make setup` installs it (ipykernel install --name lab6)")
    base = tmp_path_factory.mktemp("jupyterlab")
    served, settings = base / "served", base / "settings"
    served.mkdir()
    for name, text in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(text)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(_env(), JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"))
    log = open(base / "jupyterlab.log", "w")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={served}", "--LabApp.expose_app_in_browser=True"]
    proc = subprocess.Popen(cmd, cwd=served, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}; its log: {base / 'jupyterlab.log'}\n"
                            f"{(base / 'jupyterlab.log').read_text()[-2000:]}")
            try:
                req = urllib.request.Request(f"{url}/api/status", headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(req, timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on {url} in {SERVER_START_S} s; "
                                f"log: {base / 'jupyterlab.log'}")
                time.sleep(0.5)
        yield url, token, served
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to JupyterLab and its kernels (one process group), SIGKILL after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # kernels left behind by a clean server exit
        os.killpg(proc.pid, signal.SIGKILL)


def _copy(name: str, served: Path, parameters: dict, keep=None) -> str:
    """A copy of notebooks/<name> in `served` with `parameters` injected after its parameters cell and the
    `lab6` kernel; `keep(source)` picks the code cells kept besides the parameters cell (default all)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(NOTEBOOK_DIR / name))  # papermill's reader: the metadata it expects
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL, "language": "python"}
    if keep is not None:
        nb.cells = [c for c in nb.cells if c.cell_type == "code"
                    and ("parameters" in c.metadata.get("tags", []) or keep(c.source))]
    nb = parameterize_notebook(nb, parameters, kernel_name=KERNEL, language="python")
    nbformat.write(nb, served / name)
    return name


class Browser:
    """One JupyterLab page; `step(name)` turns any failure into one line naming the step, a screenshot and
    the notebook's error outputs."""

    def __init__(self, page, shots: Path):
        self.page, self.shots = page, shots

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        with contextlib.suppress(Exception):
            self.page.screenshot(path=path, full_page=True, timeout=20_000)
        return path

    @contextlib.contextmanager
    def step(self, name: str):
        try:
            yield
        except Exception as e:  # noqa: BLE001 - reported below with the step, a screenshot and the errors
            first = str(e).splitlines()[0] if str(e) else ""
            failure = f"step '{name}' failed: {type(e).__name__}: {first}"
        else:
            self.shot(name)
            return
        shot = self.shot(f"failed-{name}")
        errors = ""
        with contextlib.suppress(Exception):
            errors = "\n".join(self.page.locator(f'[data-mime-type="{ERROR_MIME}"]').all_inner_texts())[-3000:]
        msg = f"{failure}\nscreenshot: {shot}\nnotebook error output:\n{errors or '(none)'}"
        raise pytest.fail.Exception(msg, pytrace=False) from None

    def run_notebook(self, url: str, token: str, name: str) -> None:
        """Open `name`, wait for its `lab6` kernel, run all cells with JupyterLab's command, check no cell failed."""
        page = self.page
        with self.step(f"{name}-open"):
            page.goto(f"{url}/lab/tree/{name}?token={token}", timeout=60_000)
            page.wait_for_function(
                """name => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                   const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
                   return w && w.context.path === name && k && k.name === 'lab6' && k.status === 'idle'; }""",
                arg=name, timeout=NOTEBOOK_RUN_S * 1000)
        with self.step(f"{name}-run-all"):
            page.evaluate("""() => { window.__runAll = undefined;
                window.jupyterapp.commands.execute('notebook:run-all-cells')
                  .then(ok => { window.__runAll = ok; }, e => { window.__runAll = String(e); }); }""")
            page.wait_for_function("() => window.__runAll !== undefined", timeout=NOTEBOOK_RUN_S * 1000)
            ok = page.evaluate("() => window.__runAll")
            assert ok is True, f"a cell raised (run-all returned {ok!r})"


def _png(locator) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(locator.screenshot(timeout=WIDGET_S * 1000))).convert("RGB"), np.float32)


@pytest.fixture
def browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the `test` extra)")
    chromium = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"], timeout=60_000)
        try:
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WIDGET_S * 1000)
            yield Browser(page, tmp_path)
        finally:
            b.close()


def test_forward_slider_and_label_picker_in_jupyterlab(browser, jupyterlab, tiny_model, tmp_path):
    """Notebook 02 whole, then a trimmed notebook 04 (setup, parameters, imports, picker): see the module doc."""
    from playwright.sync_api import expect

    url, token, served = jupyterlab
    ds, model = tiny_model
    page = browser.page
    common = dict(profile="tiny", data_root=str(ds), run_dir=str(tmp_path / "run"), device="cpu", seed=0)

    # Notebook 02: drag the t slider, the noised image changes.
    nb02 = _copy("02_forward_noising.ipynb", served, common)
    browser.run_notebook(url, token, nb02)
    with browser.step("02-find-slider"):
        t_label = page.locator(".widget-label", has_text=re.compile(r"^\s*t\s*$"))  # the slider's description
        slider = page.locator(".widget-slider").filter(has=t_label).last
        box = page.locator(".widget-vbox").filter(has=slider).last
        image, readout = box.locator(".widget-image").first, slider.locator(".widget-readout")
        slider.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        t0, src0, pixels0 = int(readout.inner_text()), image.get_attribute("src"), _png(image)
    with browser.step("02-drag-slider"):
        handle, track = slider.locator(".noUi-handle"), slider.locator(".noUi-target")
        h, tr = handle.bounding_box(), track.bounding_box()
        page.mouse.move(h["x"] + h["width"] / 2, h["y"] + h["height"] / 2)
        page.mouse.down()
        page.mouse.move(tr["x"] + 0.8 * tr["width"], h["y"] + h["height"] / 2, steps=8)
        page.mouse.up()
        page.wait_for_function("([el, t0]) => parseInt(el.textContent) > t0 + 100",
                               arg=[readout.element_handle(), t0])
        t1 = int(readout.inner_text())
        box.get_by_text(f"t = {t1} ").wait_for()  # the caption, written by the kernel for the new t
        page.wait_for_function("([img, src]) => img.getAttribute('src') !== src && img.complete",
                               arg=[image.element_handle(), src0])
        diff = np.abs(_png(image) - pixels0).mean()
        assert diff > 5, f"the image barely changed from t={t0} to t={t1} (mean |diff| {diff:.2f} of 255)"

    # Notebook 04 (trimmed): choose two objects, press Generate, four samples appear.
    params04 = dict(common, model=str(model), compare_samplers=False, ddpm_1000=False)
    nb04 = _copy("04_sampling.ipynb", served, params04,
                 keep=lambda src: any(k in src for k in ("PROJECT_ROOT", "load_pipeline", "label_picker")))
    browser.run_notebook(url, token, nb04)
    with browser.step("04-pick-labels"):
        generate = page.get_by_role("button", name="Generate")
        picker = page.locator(".widget-vbox").filter(has=generate).last
        generate.wait_for()
        selects = picker.locator(".widget-dropdown select")
        expect(selects).to_have_count(6)  # 3 rows of (colour, shape)
        for i, value in enumerate(["blue", "cube", "-", "sphere", "yellow", "cylinder"]):
            selects.nth(i).select_option(value)
    with browser.step("04-generate"):
        image = picker.locator(".widget-image").first
        assert image.evaluate("img => img.naturalWidth") == 0, "the picker shows an image before Generate"
        generate.click()
        status = picker.get_by_text("blue cube, yellow cylinder", exact=True).or_(picker.get_by_text("error:"))
        status.wait_for(timeout=120_000)
        assert not status.inner_text().startswith("error:"), status.inner_text()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        size = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size == [4 * 72, 72], f"expected a row of 4 samples (288 x 72 px), got {size}"
        assert _png(image).std() > 1, "the generated images are blank"
