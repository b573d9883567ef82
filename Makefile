# Two commands: `make run` (the main job) and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch 2.13.0: this workplace's pip finds a local CPU wheel; from PyPI on Linux the same line fetches the CUDA
# build (GBs), so elsewhere keep it CPU-only with `make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"`.
# On a GPU box: `make setup TORCH_SPEC="torch"`.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP  := $(VENV)/.installed
PROFILE ?= quick
ARGS ?=
# `make run` is sized for a 2-core CPU (under 30 min): notebook 03 trains live for 14 minutes instead of the profile's
# 20, and notebook 04 leaves DDPM-1000 out of its sampler comparison. On a GPU: `make run RUN_ARGS=` (the profile's
# whole training and every sampler).
RUN_ARGS ?= --max-minutes 14 --no-ddpm-1000
# `make run` has the machine to itself, so idle OpenMP threads spin briefly before they sleep (lab6 alone sets
# OMP_WAIT_POLICY=PASSIVE, right for a shared CPU); measured by benchmarks/bench_threads.py (up to 44 % faster steps).
# `make run GOMP_SPINCOUNT=0` sleeps at once.
run: export GOMP_SPINCOUNT ?= 10000

.PHONY: setup run test lab clean-outputs wheelhouse offline-run

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,lab]"
	$(PY) -m ipykernel install --sys-prefix --name lab6 --display-name "lab6 (.venv)" >/dev/null
	touch $(STAMP)

run: setup
	$(PY) -m lab6 run --profile $(PROFILE) $(RUN_ARGS) $(ARGS)

test: setup
	$(PY) -m ruff check lab6 tests benchmarks
	$(PY) -m pytest $(ARGS)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean-outputs:
	rm -rf outputs/

# The offline path (README "On a GPU box"): wheels of what `lab6 run` needs beyond torch and diffusers, which a GPU
# box already has, for its CPython 3.11 and 3.12 on x86-64 Linux. accelerate and torchmetrics name torch as a
# dependency, so they come without theirs (listed beside them); setuptools and wheel build the editable install.
# numpy and Pillow (46 MB) come with diffusers: what matplotlib pulls of them is dropped.
WHEELHOUSE ?= .whl
WHEEL_PYTHONS ?= 3.11 3.12
WHEELS ?= papermill nbclient nbformat ipykernel jupyter_client nbconvert ipywidgets matplotlib pyyaml tqdm \
          setuptools wheel
WHEELS_NO_DEPS ?= accelerate torchmetrics lightning-utilities
WHEEL_TARGET = --only-binary=:all: --implementation cp --python-version $$v --platform manylinux_2_28_x86_64 \
               --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any
OFFLINE_ARGS ?= --profile full

wheelhouse:
	rm -rf $(WHEELHOUSE)
	for v in $(WHEEL_PYTHONS); do \
	  $(PYTHON) -m pip download -q -d $(WHEELHOUSE) $(WHEEL_TARGET) $(WHEELS) && \
	  $(PYTHON) -m pip download -q -d $(WHEELHOUSE) $(WHEEL_TARGET) --no-deps $(WHEELS_NO_DEPS) || exit 1; \
	done
	rm -f $(WHEELHOUSE)/numpy-*.whl $(WHEELHOUSE)/pillow-*.whl
	@du -sh $(WHEELHOUSE)

# With no network: a venv that sees the box's torch and diffusers, the wheelhouse, then the workbook.
offline-run:
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --no-index --find-links $(WHEELHOUSE) -e .
	$(PY) -m lab6 run $(OFFLINE_ARGS) $(ARGS)
