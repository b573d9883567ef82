"""Speed of the CLEVR-style renderer: images per second per core at 64×64 (target: >= 300).

    .venv/bin/python benchmarks/bench_synth.py [--scenes 300] [--size 64] [--workers 2]

Prints, for one process: render-only and render+PNG rates per wall second and per CPU second (the
machine may be shared, so CPU time is the fairer per-core figure), then the wall time of a real
`write_dataset` run with --workers processes and the projected time of the default 18 000-image dataset.
Exits with status 1 when the per-CPU-second rate with PNG encoding misses the target.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab6 import synth as S  # noqa: E402

TARGET = 300.0


def bench_render(scenes: int, size: int) -> dict:
    """Render `scenes` three-object scenes in this process; rates with and without PNG encoding."""
    cfg = S.SynthConfig(size=size)
    S.render_scene(["red cube"], S.scene_rng(0, 2, 0), cfg)  # warm-up
    labels = [S.sample_train_labels(S.scene_rng(0, 1, i), 3, set()) for i in range(scenes)]
    wall, cpu = time.perf_counter(), time.process_time()
    results = [S.render_scene(names, S.scene_rng(0, 2, i), cfg) for i, names in enumerate(labels)]
    render_wall, render_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    for r in results:
        for im in r.images:
            S.encode_png(im)
    png_wall, png_cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = 3 * scenes
    return {"images": n, "render_wall": n / render_wall, "render_cpu": n / render_cpu,
            "total_wall": n / (render_wall + png_wall), "total_cpu": n / (render_cpu + png_cpu),
            "ms_per_scene": 1000 * render_cpu / scenes}


def bench_dataset(scenes: int, size: int, workers: int) -> float:
    """Wall seconds of a real write_dataset run (files, test renders and JSON included)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        S.write_dataset(Path(tmp) / "synth", scenes=scenes, seed=0, size=size, workers=workers, progress=False)
        return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=300, help="scenes rendered in the one-process test (3 images each)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--workers", type=int, default=0, help="processes for the write_dataset test (0 = all cores)")
    p.add_argument("--dataset-scenes", type=int, default=1000, help="scenes in the write_dataset test (0 = skip)")
    args = p.parse_args()

    r = bench_render(args.scenes, args.size)
    print(f"one process, {r['images']} images at {args.size}x{args.size} ({r['ms_per_scene']:.2f} ms CPU per 3-image scene)")
    print(f"  render only      : {r['render_wall']:7.0f} img/s wall   {r['render_cpu']:7.0f} img/s per CPU-second")
    print(f"  render + PNG     : {r['total_wall']:7.0f} img/s wall   {r['total_cpu']:7.0f} img/s per CPU-second"
          f"   (target >= {TARGET:.0f} per core)")
    if args.dataset_scenes:
        workers = args.workers or S.cpu_count()
        secs = bench_dataset(args.dataset_scenes, args.size, workers)
        n = 3 * args.dataset_scenes + 96
        print(f"write_dataset, {args.dataset_scenes} scenes ({n} files) with {workers} workers: {secs:.1f} s wall "
              f"= {n / secs:.0f} img/s, {n / secs / workers:.0f} img/s/core")
        print(f"  projected default dataset (6000 scenes, 18096 images): {18096 / (n / secs):.0f} s")
    ok = r["total_cpu"] >= TARGET
    print("PASS" if ok else "FAIL", f"{r['total_cpu']:.0f} img/s per core vs target {TARGET:.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
