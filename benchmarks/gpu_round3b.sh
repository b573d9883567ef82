#!/usr/bin/env bash
# Round 3, second call: fine-tune the count checker alone on the card with binding-heavy scenes and look-alikes.
#   bash benchmarks/gpu_round3b.sh        # on the device machine; OUT must be set
set -uo pipefail
MINUTES=${MINUTES:-2.2}
PY=${PY:-python3}
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8
$PY -m lab6 train-checker --data data/checker2 --scenes 12000 --render-seed 3 --workers 16 --init pretrained/checker/checker.pth \
  --lr 1e-3 --epochs 100 --max-minutes "$MINUTES" --device "${DEVICE:-cuda}" --out "$OUT/checker.pth" 2>&1 | grep -v "checker renders" | tee "$OUT/checker.log"
