#!/usr/bin/env bash
# One prepared GPU run for pretrained/quick: render the default synthetic set, train CONFIG (gpu.yaml) for MINUTES
# (from random weights, or from INIT, a model folder such as the last CPU chunk), which exports the EMA weights in
# fp16 (gpu.yaml's export_dtype); with SEEDS set, bench_fidelity reads it there too (on the CPU cores: ~1 min a
# seed on 16). What must last comes back in $OUT as <= 15 MB parts of one tar.
#
#   bash pretrained/quick/gpu.sh                 # on the device machine, from the repository root; OUT set
#   MINUTES=0.2 SCENES=60 DEVICE=cpu OUT=/tmp/out bash pretrained/quick/gpu.sh   # tiny, on a CPU
#
# Rejoin here with `cat OUT/part-* | tar x -C DEST`; DEST/run/pipeline is then a model folder for --init-from.
set -uo pipefail
MINUTES=${MINUTES:-7.0}
SCENES=${SCENES:-6000}
SEEDS=${SEEDS:-}                # e.g. 0-2; empty: read it at home
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-16}
INIT=${INIT:-}
CONFIG=${CONFIG:-pretrained/quick/gpu.yaml}   # decay.yaml with STEPS set: a chunk whose LR ends at 0
STEPS=${STEPS:-}                # --max-steps: what the card trains in MINUTES, so that a decay ends
W=${W:-/tmp/quick-gpu}
PY=${PY:-python3}
source pretrained/quick/gpu_env.sh

stamp "render the default synthetic set"
$PY -m lab6 synth --out data/synth --scenes "$SCENES" --workers "$WORKERS" > "$W/logs/synth.log" 2>&1 || { cat "$W/logs/synth.log"; exit 1; }

stamp "train"
$PY -m lab6 train --profile quick --config "$CONFIG" --data data/synth --out "$W/run" --max-minutes "$MINUTES" \
  --device "$DEVICE" --no-progress ${INIT:+--init-from "$INIT"} ${STEPS:+--max-steps "$STEPS"} > "$W/logs/train.log" 2>&1
stamp "train ended: $?"

if [ -n "$SEEDS" ]; then
stamp "bench_fidelity, seeds $SEEDS"
$PY benchmarks/bench_fidelity.py --models "$W/run/pipeline" --seeds "$SEEDS" --settings @3:shift \
  --judges default:default --data data/synth --out "$W/fidelity" > "$W/logs/fidelity.log" 2>&1
stamp "bench_fidelity ended: $?"
tail -20 "$W/logs/fidelity.log"
fi

(cd "$W" && tar cf - logs run/pipeline run/metrics.jsonl run/config.yaml fidelity 2>/dev/null) \
  | split -b 15000000 -d - "$OUT/part-"
ls -la "$OUT"
stamp "done"
