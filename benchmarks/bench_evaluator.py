"""Ceiling of the evaluator: its accuracy on the ground-truth renders of each test file, sharp and round-tripped.

    .venv/bin/python benchmarks/bench_evaluator.py [--data data/synth] [--train] [--evaluator PATH]

Reads root/<split>_gt/<i>.png for test, new_test and unseen_test, scores them with the course's pooled top-k
metric as they are and after a 64 -> 32 -> 64 bilinear round trip (what a 32x32 sample looks like once
upsampled), and prints the evaluator's training wall time. Target: >= 0.99 everywhere, trained in <= 10 min.
`--train` first runs `train_evaluator` (a no-op when a complete checkpoint for the same config exists).
`--renders K` also renders every label set K more times with fresh scene seeds (the project's renderer, so for
synthetic evaluators) and reports that error rate by objects per image: 32 images per split move the figure in
steps of 0.012-0.014 per miss, K x 32 pin it down.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from lab6 import evaluator as E
from lab6.data import CourseData, load_image_folder

TARGET = 0.99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synth", help="dataset root holding <split>_gt/ folders")
    parser.add_argument("--evaluator", default=None, help="checkpoint (default <data>/evaluator.pth)")
    parser.add_argument("--train", action="store_true", help="train the evaluator first if it is not complete")
    parser.add_argument("--device", default=None, help="cpu or cuda")
    parser.add_argument("--renders", type=int, default=0, metavar="K",
                        help="also score K fresh renders of every label set (default 0; about 5 ms per image on 2 cores)")
    parser.add_argument("--render-seed", type=int, default=1000,
                        help="first scene seed of those renders (default 1000; never the dataset's own scenes)")
    args = parser.parse_args(argv)
    if args.renders < 0:
        parser.error(f"--renders: expected a count >= 0, got {args.renders}")

    data = CourseData(args.data)
    path = Path(args.evaluator) if args.evaluator else data.root / "evaluator.pth"
    if args.train:
        E.train_evaluator(data.root, out=path, device=args.device)
    ev = E.Evaluator(path, device=args.device)
    info = ev.info
    print(f"evaluator: {ev.path} on {ev.device}; load average now {os.getloadavg()[0]:.2f}")
    if "train_seconds" in info:
        cfg = info.get("config", {})
        print(f"training: {info['train_seconds'] / 60:.1f} min wall, width {info.get('train_width', 64)}, "
              f"{info['steps']} steps "
              f"({info['epochs_done']:.2f} epochs of batch {cfg.get('batch_size')}), on {info.get('device')} "
              f"with {info.get('torch_threads')} threads, load average {info.get('load_avg_start', [-1])[0]:.2f} "
              f"at start, {info.get('load_avg_end', [-1])[0]:.2f} at end")
        print(f"held-out training images: {info['held_out_accuracy']:.4f}, "
              f"round-tripped {info['held_out_accuracy_round_trip']:.4f}")

    ok = True
    print(f"\n{'split':<12} {'images':>6} {'sharp':>16} {'64->32->64':>16}   misses (sharp): shape/colour/missing"
          f"   images showing an unrequested object (sharp)")
    for split in data.splits():
        label_sets = data.label_sets(split)
        gt = data.root / f"{split}_gt"
        if not gt.is_dir():
            print(f"{split:<12} no {gt.name}/ folder, skipped")
            continue
        t0 = time.perf_counter()
        images = load_image_folder(gt, len(label_sets))
        rows = []
        for x in (images, E.round_trip(images, 32)):
            counts = E.summarize(ev.breakdown(x, label_sets))
            rows.append(counts)
            ok &= counts["hits"] / counts["labels"] >= TARGET
        sharp, rt = rows
        cell = [f"{c['hits'] / c['labels']:.4f} ({c['hits']}/{c['labels']})" for c in rows]
        print(f"{split:<12} {len(label_sets):>6} {cell[0]:>16} {cell[1]:>16}   "
              f"{sharp[E.WRONG_SHAPE]}/{sharp[E.WRONG_COLOUR]}/{sharp[E.MISSING]}"
              f"   {sharp['with unrequested']}/{sharp['images']}  ({time.perf_counter() - t0:.1f} s)")
    if args.renders:
        fresh_renders(ev, data, args.renders, args.render_seed)
    minutes = info.get("train_seconds", float("nan")) / 60
    ok &= minutes <= 10
    print(f"\ntarget: >= {TARGET} on every split and both versions, trained in <= 10 min: "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


def fresh_renders(ev: E.Evaluator, data: CourseData, k: int, seed: int) -> None:
    """Score k fresh renders of every label set of each split; print accuracy and misses by objects per image."""
    from lab6.data import from_uint8
    from lab6.synth import render_labels

    print(f"\n{k} fresh renders of every label set (scene seeds {seed}..{seed + k - 1}), sharp and 64->32->64:")
    print(f"{'split':<12} {'images':>6} {'sharp':>20} {'64->32->64':>20}   sharp misses by objects per image "
          f"(1/2/3): miss/labels; images showing an unrequested object")
    for split in data.splits():
        label_sets = data.label_sets(split)
        t0 = time.perf_counter()
        results, round_tripped = [], []
        for j in range(k):
            images = from_uint8(render_labels(label_sets, seed=seed + j))  # (B, 3, 64, 64) in [-1, 1]
            results += ev.breakdown(images, label_sets)
            round_tripped += ev.breakdown(E.round_trip(images, 32), label_sets)
        counts, rt = E.summarize(results), E.summarize(round_tripped)
        by_n = {n: [0, 0] for n in (1, 2, 3)}
        for r in results:
            by_n.setdefault(len(r.labels), [0, 0])
            by_n[len(r.labels)][0] += len(r.misses)
            by_n[len(r.labels)][1] += len(r.labels)
        acc = [f"{c['hits'] / c['labels']:.4f} ({c['hits']}/{c['labels']})" for c in (counts, rt)]
        per_n = "  ".join(f"{m}/{t}" for _, (m, t) in sorted(by_n.items()))
        print(f"{split:<12} {len(results):>6} {acc[0]:>20} {acc[1]:>20}   {per_n}   shape/colour/missing "
              f"{counts[E.WRONG_SHAPE]}/{counts[E.WRONG_COLOUR]}/{counts[E.MISSING]}   unrequested "
              f"{counts['with unrequested']}/{counts['images']}  ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
