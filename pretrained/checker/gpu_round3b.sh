#!/usr/bin/env bash
# Round 3, second call: fine-tune the count checker alone on the card with binding-heavy scenes and look-alikes.
#   bash pretrained/checker/gpu_round3b.sh        # on the device machine, from the repository root; OUT must be set
set -uo pipefail
MINUTES=${MINUTES:-2.2}
W=${W:-/tmp/round3b}
PY=${PY:-python3}
source pretrained/quick/gpu_env.sh
export OMP_NUM_THREADS=8   # the card is this job's alone
$PY -m lab6 train-checker --data data/checker2 --scenes 12000 --render-seed 3 --workers 16 --init pretrained/checker/checker.pth \
  --lr 1e-3 --epochs 100 --max-minutes "$MINUTES" --device "${DEVICE:-cuda}" --out "$OUT/checker.pth" 2>&1 | grep -v "checker renders" | tee "$OUT/checker.log"
