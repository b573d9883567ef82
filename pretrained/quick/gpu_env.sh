# Sourced by pretrained/quick/gpu.sh, pretrained/quick-multihot/gpu_round3.sh and pretrained/checker/gpu_round3b.sh:
# needs W (work folder), OUT and PY set. Makes the folders, installs the wheels carried in .whl/ when the device
# machine lacks them, puts this checkout first on the path, defines `stamp` (a line with the seconds since start)
# and records the machine in $W/logs/machine.txt.
mkdir -p "$W/logs" "$OUT"
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
{ nvidia-smi -L 2>/dev/null; $PY -c "import torch, diffusers, sys; print(sys.version.split()[0], torch.__version__, diffusers.__version__)"; nproc; } | tee "$W/logs/machine.txt"
