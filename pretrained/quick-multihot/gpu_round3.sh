#!/usr/bin/env bash
# One prepared GPU session (round 3): the shipped evaluator, the count checker and two 64x64 UNets, trained at
# once on one card; everything that must last comes back in $OUT as <= 15 MB parts of one tar. It made stage 1 of
# pretrained/quick-multihot (v2), pretrained/evaluator and the first step of pretrained/checker; v1 is a measurement
# (benchmarks/recipes/quick64-v1.yaml, benchmarks/LOG.md "Round 3").
#
#   bash pretrained/quick-multihot/gpu_round3.sh            # on the device machine, from the repository root; OUT must be set
#   MINUTES=0.2 SCENES=60 DEVICE=cpu bash pretrained/quick-multihot/gpu_round3.sh   # the same steps, tiny, on a CPU
#
# Rejoin here with `cat OUT/part-* | tar x -C DEST`.
set -uo pipefail
MINUTES=${MINUTES:-7.0}          # UNet training budget
EV_MINUTES=${EV_MINUTES:-6.0}    # evaluator
CK_MINUTES=${CK_MINUTES:-5.0}    # count checker
SCENES=${SCENES:-6000}           # default synthetic set (the evaluator's all-pairs set has 3x, the checker's 2x)
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-16}
W=${W:-/tmp/round3}
PY=${PY:-python3}
source pretrained/quick/gpu_env.sh

stamp "render the default synthetic set"
$PY -m lab6 synth --out data/synth --scenes "$SCENES" --workers "$WORKERS" > "$W/logs/synth.log" 2>&1 || { cat "$W/logs/synth.log"; exit 1; }

for v in v1 v2; do
  recipe=pretrained/quick-multihot/quick64-v2.yaml
  [ "$v" = v1 ] && recipe=benchmarks/recipes/quick64-v1.yaml
  stamp "start UNet $v"
  $PY -m lab6 train --profile quick --config "$recipe" --data data/synth --out "$W/$v" \
    --max-minutes "$MINUTES" --device "$DEVICE" --no-progress > "$W/logs/train-$v.log" 2>&1 &
done

( stamp "render the evaluator's all-pairs set"
  $PY -m lab6 synth --all-pairs --scenes $((3 * SCENES)) --seed 1 --out data/synth-evaluator --workers 8 \
    > "$W/logs/synth-evaluator.log" 2>&1
  stamp "train the evaluator"
  $PY -m lab6 train-evaluator --data data/synth-evaluator --out "$W/evaluator.pth" --width 64 --batch-size 128 \
    --epochs 100 --max-minutes "$EV_MINUTES" --device "$DEVICE" > "$W/logs/evaluator.log" 2>&1
  stamp "evaluator done: $?" ) &
( stamp "render the checker's scenes and train it"
  $PY -m lab6 train-checker --data data/checker --scenes $((2 * SCENES)) --workers 8 --out "$W/checker.pth" \
    --epochs 100 --max-minutes "$CK_MINUTES" --device "$DEVICE" > "$W/logs/checker.log" 2>&1
  stamp "checker done: $?" ) &
wait
stamp "all jobs ended"

# fp16 copies of what ships: the evaluator in the course's format, the UNets' EMA exports
$PY - "$W" <<'EOF' 2>&1 | tee "$W/logs/pack.log"
import sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
w = Path(sys.argv[1])
ev = w / "evaluator.pth"
if ev.is_file():
    ck = torch.load(ev, map_location="cpu", weights_only=True)
    ck["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, w / "evaluator-fp16.pth"); ev.unlink()
for f in w.glob("v*/pipeline/unet/diffusion_pytorch_model.safetensors"):
    save_file({k: v.half() for k, v in load_file(f).items()}, f)
for p in sorted(w.rglob("*")):
    if p.is_file() and "checkpoint-" not in str(p):
        print(f"{p.stat().st_size / 1e6:8.2f} MB  {p.relative_to(w)}")
EOF
cp -r data/synth/test.json data/synth/new_test.json data/synth/unseen_test.json "$W/logs/" 2>/dev/null
(cd "$W" && tar cf - logs evaluator-fp16.pth checker.pth v1/pipeline v1/metrics.jsonl v1/config.yaml \
   v2/pipeline v2/metrics.jsonl v2/config.yaml 2>/dev/null) | split -b 15000000 -d - "$OUT/part-"
ls -la "$OUT"
stamp "done"
