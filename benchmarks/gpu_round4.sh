#!/usr/bin/env bash
# One prepared GPU session (round 4): the shipped model's recipe from the start (quick64-v3), the same with one
# token per object read by cross-attention (quick64-v3-tokens), and `lab6 run --profile full --device cuda` end to
# end, all at once on one card. What must last comes back in $OUT as <= 15 MB parts of one tar, plus summary.txt.
#
#   bash benchmarks/gpu_round4.sh            # on the device machine, from the repository root; OUT must be set
#   MINUTES=0.3 FULL_MINUTES=0.2 SCENES=60 DATA=/tmp/r4data DEVICE=cpu PROFILE_FULL=tiny W=/tmp/r4 OUT=/tmp/r4out \
#     bash benchmarks/gpu_round4.sh    # the same steps, tiny, on a CPU (under 2 minutes)
#
# Rejoin here with `cat OUT/part-* | tar x -C DEST`; then score the two UNets on the CPU with
# `benchmarks/bench_fidelity.py --models DEST/v3/pipeline,DEST/v3-tokens/pipeline --seeds 0-2`.
set -uo pipefail
MINUTES=${MINUTES:-6.0}            # UNet training budget (each recipe's max_steps may end it first)
FULL_MINUTES=${FULL_MINUTES:-3.0}  # notebook 03's training in `lab6 run --profile full`
SCENES=${SCENES:-6000}             # the default synthetic set
DATA=${DATA:-data/synth}           # where it is rendered
DEVICE=${DEVICE:-cuda}
PROFILE_FULL=${PROFILE_FULL:-full}
W=${W:-/tmp/round4}
PY=${PY:-python3}
source benchmarks/gpu_env.sh

stamp "render the default synthetic set"
$PY -m lab6 synth --out "$DATA" --scenes "$SCENES" > "$W/logs/synth.log" 2>&1 || { cat "$W/logs/synth.log"; exit 1; }

for v in v3 v3-tokens; do
  stamp "start UNet $v"
  $PY -m lab6 train --profile quick --config "benchmarks/recipes/quick64-$v.yaml" --data "$DATA" --out "$W/$v" \
    --max-minutes "$MINUTES" --device "$DEVICE" --no-progress > "$W/logs/train-$v.log" 2>&1 &
done
( stamp "lab6 run --profile $PROFILE_FULL --device $DEVICE"
  $PY -m lab6 run --profile "$PROFILE_FULL" --device "$DEVICE" --max-minutes "$FULL_MINUTES" --out "$W/full-run" \
    --data-root "$DATA" > "$W/logs/lab6-run-full.log" 2>&1
  stamp "lab6 run done: $?" ) &
wait
stamp "all jobs ended"

# the summary: img/s and steps of each training, top-k and exact scenes of the full run; fp16 UNet exports
$PY - "$W" <<'PYEOF' 2>&1 | tee "$OUT/summary.txt"
import json, statistics, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
w = Path(sys.argv[1])
for name, folder in (("v3", w / "v3"), ("v3-tokens", w / "v3-tokens"), ("full run", w / "full-run" / "train")):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()] if \
        (folder / "metrics.jsonl").exists() else []
    rows = [r for r in rows if "img_per_s" in r]  # log_every steps apart
    if rows:
        print(f"{name}: {rows[-1]['step']} steps in {rows[-1]['elapsed_s']:.0f} s, median "
              f"{statistics.median(r['img_per_s'] for r in rows):.0f} img/s, last loss {rows[-1]['loss']:.4f}")
    else:
        print(f"{name}: no training metrics")
m = w / "full-run" / "metrics.json"
if m.exists():
    m = json.loads(m.read_text())
    t3, r5 = m.get("03_training", {}), m.get("05_results", {})
    print(f"full run, notebook 03: {t3.get('steps')} steps at {t3.get('img_per_s', 0):.0f} img/s")
    for split, a in r5.get("accuracy", {}).items():
        b = r5.get("beyond_top_k", {}).get(split, {})
        print(f"full run, {split}: top-k {a['accuracy (seed 0)']:.3f} (mean of 3 seeds {a['mean over 3 seeds']:.3f}), "
              f"exact scenes {b.get('exact scenes', float('nan')):.3f}")
    if "fid" in r5:
        print(f"full run: FID {r5['fid']['fid']:.1f} (floor {r5['fid']['floor']['fid']:.1f})")
for f in w.glob("v3*/pipeline/unet/diffusion_pytorch_model.safetensors"):
    save_file({k: v.half() for k, v in load_file(f).items()}, f)
for p in sorted(w.rglob("*")):
    if p.is_file() and "checkpoint-" not in str(p) and p.stat().st_size > 1e6:
        print(f"{p.stat().st_size / 1e6:8.2f} MB  {p.relative_to(w)}")
PYEOF
(cd "$W" && tar cf - logs v3/pipeline v3/metrics.jsonl v3/config.yaml v3-tokens/pipeline v3-tokens/metrics.jsonl \
   v3-tokens/config.yaml full-run/metrics.json full-run/report.html full-run/train/metrics.jsonl \
   full-run/notebooks 2>/dev/null) | split -b 15000000 -d - "$OUT/part-"
ls -la "$OUT"
stamp "done"
