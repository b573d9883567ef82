"""Ceilings of the judges: the evaluator's top-k and the count checker's exact-scene accuracy on ground truth.

    .venv/bin/python benchmarks/bench_evaluator.py [--data data/synth] [--renders 20] [--evaluator PATH]
        [--checker PATH] [--out DIR] [--look second]

Reads root/<split>_gt/<i>.png for test, new_test and unseen_test and scores them with the course's pooled top-k
metric as they are and after a 64 -> 32 -> 64 bilinear round trip (what the course's evaluator was trained with).
`--renders K` (default 20: 640 images per split) also renders every label set K more times with scene seeds
the evaluator never saw and reports the same, by objects per image, with the checker's exact-scene accuracy
beside it; the misses are drawn as a grid (<out>/misses.png, each captioned with what was asked and read).
The same renders are then seen under other lights (`LIGHTS`: warm, cool, green and magenta tints of 5-6 % per
channel, gamma 0.9 and 1.1, brightness +-0.02, and all of one kind together with a little blur and noise), one
row each with both judges' ceilings. `--look second` renders those in the stand-in's look (`lab6 synth --look second`,
320x240 resized to 64x64 as the course's files are), to measure how a judge reads images unlike the default.
Targets: top-k >= 0.98 on test-like, >= 0.975 on new_test-like and unseen-like renders, the round trip within
0.01 of plain; the checker's exact-scene accuracy >= 0.95; under every light both >= 0.95 on each split.
The evaluator defaults to the one `lab6` finds for --data (the shipped one for the default synthetic data).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_out  # noqa: E402

from lab6 import evaluator as E  # noqa: E402
from lab6.data import CourseData, load_image_folder  # noqa: E402
from lab6.evaluator_train import train_evaluator  # noqa: E402

TARGETS = {"test": 0.98, "new_test": 0.975, "unseen_test": 0.975}
ROUND_TRIP_GAP = 0.01
EXACT_TARGET = 0.95
LIGHT_TARGET = 0.95  # top-k and exact scenes under each changed light, every split
# name: (gain per channel, gamma, brightness offset in [0, 1] units, blur sigma in px, noise std in [0, 1] units)
LIGHTS = {
    "warm tint": ((1.06, 1.0, 0.94), 1.0, 0.0, 0.0, 0.0),
    "cool tint": ((0.94, 1.0, 1.06), 1.0, 0.0, 0.0, 0.0),
    "green tint": ((0.95, 1.06, 0.95), 1.0, 0.0, 0.0, 0.0),
    "magenta tint": ((1.05, 0.94, 1.05), 1.0, 0.0, 0.0, 0.0),
    "gamma 0.9": ((1.0, 1.0, 1.0), 0.9, 0.0, 0.0, 0.0),
    "gamma 1.1": ((1.0, 1.0, 1.0), 1.1, 0.0, 0.0, 0.0),
    "brightness +0.02": ((1.0, 1.0, 1.0), 1.0, 0.02, 0.0, 0.0),
    "brightness -0.02": ((1.0, 1.0, 1.0), 1.0, -0.02, 0.0, 0.0),
    "warm+g0.9+0.02+blur+noise": ((1.05, 1.0, 0.95), 0.9, 0.02, 0.5, 0.004),
    "cool+g1.1-0.02+blur+noise": ((0.95, 1.0, 1.05), 1.1, -0.02, 0.5, 0.004),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synth", help="dataset root holding <split>_gt/ folders")
    parser.add_argument("--evaluator", default=None, help="checkpoint (default: the one lab6 finds for --data)")
    parser.add_argument("--checker", default=None, help="count checker (default pretrained/checker/checker.pth; "
                                                        "'none' leaves exact-scene accuracy out)")
    parser.add_argument("--out", default=None, help="folder of the misses grid (default benchmarks/results/...)")
    parser.add_argument("--train", action="store_true", help="train the evaluator first if it is not complete")
    parser.add_argument("--device", default=None, help="cpu or cuda")
    parser.add_argument("--renders", type=int, default=20, metavar="K",
                        help="also score K fresh renders of every label set (default 20; about 5 ms per image)")
    parser.add_argument("--render-seed", type=int, default=1000,
                        help="first scene seed of those renders (default 1000; never the dataset's own scenes)")
    parser.add_argument("--look", default="default",
                        help="the renders' look: default, or second (the stand-in's: 320x240, resized to 64x64 as "
                             "the course's files are)")
    args = parser.parse_args(argv)
    if args.renders < 0:
        parser.error(f"--renders: expected a count >= 0, got {args.renders}")

    data = CourseData(args.data)
    path = Path(args.evaluator) if args.evaluator else E.find_evaluator(data_root=data.root) if not args.train \
        else data.root / "evaluator.pth"
    if args.train:
        train_evaluator(data.root, out=path, device=args.device)
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
        sharp, rt = (E.summarize(ev.breakdown(x, label_sets)) for x in (images, E.round_trip(images, 32)))
        cell = [f"{c['hits'] / c['labels']:.4f} ({c['hits']}/{c['labels']})" for c in (sharp, rt)]
        print(f"{split:<12} {len(label_sets):>6} {cell[0]:>16} {cell[1]:>16}   "
              f"{sharp[E.WRONG_SHAPE]}/{sharp[E.WRONG_COLOUR]}/{sharp[E.MISSING]}"
              f"   {sharp['with unrequested']}/{sharp['images']}  ({time.perf_counter() - t0:.1f} s)")
    if not args.renders:
        print("\ntargets: judged on fresh renders only (--renders K, e.g. 20)")
        return 0
    checker = None
    if args.checker != "none":
        from lab6.checker import CountChecker
        checker = CountChecker(args.checker, device=args.device)
        print(f"checker: {checker.path}")
    out = Path(args.out) if args.out else default_out("evaluator")
    ok = fresh_renders(ev, checker, data, args.renders, args.render_seed, out, args.look)
    print(f"\ntargets: top-k >= {', '.join(f'{s} {t}' for s, t in TARGETS.items())}, round trip within "
          f"{ROUND_TRIP_GAP} of plain" + (f", exact-scene >= {EXACT_TARGET} pooled" if checker else "")
          + f": {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


def fresh_renders(ev: E.Evaluator, checker, data: CourseData, k: int, seed: int, out: Path,
                  look: str = "default") -> bool:
    """Score k fresh renders of every label set of each split; print accuracy, misses by objects per image and the
    checker's exact-scene accuracy; draw the misses; whether the targets are met."""
    from lab6.data import from_uint8

    print(f"\n{k} fresh renders of every label set in the {look} look (scene seeds {seed}..{seed + k - 1}), sharp "
          f"and 64->32->64:")
    print(f"{'split':<12} {'images':>6} {'sharp':>20} {'64->32->64':>20}   sharp misses by objects per image "
          f"(1/2/3): miss/labels; images showing an unrequested object; exact scenes")
    ok, missed, exact_hits, exact_n, renders = True, [], 0, 0, {}
    for split in data.splits():
        label_sets = data.label_sets(split)
        t0 = time.perf_counter()
        results, round_tripped, exact = [], [], []
        renders[split] = []
        for j in range(k):
            images = from_uint8(render(label_sets, seed + j, look))  # (B, 3, 64, 64) in [-1, 1]
            renders[split].append(images)
            verdicts = ev.breakdown(images, label_sets)
            results += verdicts
            round_tripped += ev.breakdown(E.round_trip(images, 32), label_sets)
            missed += [(images[r.index], r) for r in verdicts if r.misses]
            if checker is not None:
                exact.append(checker.report(images, label_sets)["exact"])
        counts, rt = E.summarize(results), E.summarize(round_tripped)
        acc, acc_rt = counts["hits"] / counts["labels"], rt["hits"] / rt["labels"]
        ok &= acc >= TARGETS.get(split, TARGETS["test"]) and acc - acc_rt <= ROUND_TRIP_GAP
        by_n = {n: [0, 0] for n in (1, 2, 3)}
        for r in results:
            by_n.setdefault(len(r.labels), [0, 0])
            by_n[len(r.labels)][0] += len(r.misses)
            by_n[len(r.labels)][1] += len(r.labels)
        cells = [f"{c['hits'] / c['labels']:.4f} ({c['hits']}/{c['labels']})" for c in (counts, rt)]
        per_n = "  ".join(f"{m}/{t}" for _, (m, t) in sorted(by_n.items()))
        ex = f"{sum(exact) / len(exact):.4f}" if exact else "-"
        exact_hits, exact_n = exact_hits + sum(exact) * len(label_sets), exact_n + len(exact) * len(label_sets)
        print(f"{split:<12} {len(results):>6} {cells[0]:>20} {cells[1]:>20}   {per_n}   shape/colour/missing "
              f"{counts[E.WRONG_SHAPE]}/{counts[E.WRONG_COLOUR]}/{counts[E.MISSING]}   unrequested "
              f"{counts['with unrequested']}/{counts['images']}   exact {ex}  ({time.perf_counter() - t0:.1f} s)")
    if exact_n:
        print(f"exact-scene accuracy of the checker, pooled: {exact_hits / exact_n:.4f} over {exact_n} images")
        ok &= exact_hits / exact_n >= EXACT_TARGET
    if missed:
        misses_grid(missed[:48], out / "misses.png")
    return light_rows(ev, checker, data, renders, seed) and ok


def render(label_sets: list[list[str]], seed: int, look: str) -> np.ndarray:
    """uint8 (B, 64, 64, 3) renders: the default look at 64x64, another at the course's 320x240 resized."""
    from lab6.data import resize_rgb
    from lab6.synth import render_labels

    if look == "default":
        return render_labels(label_sets, seed=seed)
    return np.stack([resize_rgb(a) for a in render_labels(label_sets, seed=seed, look=look, size=240, width=320)])


def light_rows(ev: E.Evaluator, checker, data: CourseData, renders: dict, seed: int) -> bool:
    """Both judges' ceilings on the same renders under each of LIGHTS; whether all meet LIGHT_TARGET."""
    import torch

    from lab6.light import gaussian_blur, relight
    splits = list(renders)
    print(f"\nthe same renders under other lights: top-k / exact scenes (target >= {LIGHT_TARGET} each)")
    print(f"{'light':<27} " + " ".join(f"{s:>17}" for s in splits))
    ok = True
    for name, (gain, gamma, offset, blur, noise) in {"unchanged": ((1, 1, 1), 1, 0, 0, 0), **LIGHTS}.items():
        cells = []
        for split in splits:
            label_sets = data.label_sets(split)
            gen = torch.Generator().manual_seed(seed)
            hits = labels = exact = 0
            for images in renders[split]:
                x = relight(images, gain, gamma, offset)                       # (B, 3, 64, 64)
                if blur:
                    x = gaussian_blur(x, torch.full((len(x),), float(blur)))
                if noise:
                    x = (x + 2 * noise * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
                h, n = ev.score(x, label_sets)
                hits, labels = hits + h, labels + n
                if checker is not None:
                    exact += checker.report(x, label_sets)["exact"] * len(label_sets)
            acc, ex = hits / labels, exact / (len(renders[split]) * len(label_sets))
            ok &= acc >= LIGHT_TARGET and (checker is None or ex >= LIGHT_TARGET)
            cells.append(f"{acc:.4f} / {ex:.4f}" if checker is not None else f"{acc:.4f} / -")
        print(f"{name:<27} " + " ".join(f"{c:>17}" for c in cells))
    return ok


def misses_grid(missed: list, path: Path) -> None:
    """The missed renders, each captioned with what was asked and what the evaluator read in its top k."""
    import torch

    from lab6.data import to_uint8
    from lab6.plots import labelled_grid
    path.parent.mkdir(parents=True, exist_ok=True)
    images = torch.stack([x for x, _ in missed])
    caps = ["asked: " + ", ".join(r.labels) + "\nread: " + ", ".join(r.predicted) for _, r in missed]
    labelled_grid(to_uint8(images), caps, ncol=8, scale=2.4).savefig(path, dpi=100, bbox_inches="tight")
    print(f"misses: {path} ({len(missed)} images)")


if __name__ == "__main__":
    sys.exit(main())
