"""Command-line interface: `lab6 <command>` (also `python -m lab6 <command>`), one sub-command per step.

Exit codes: 0 success, 1 bad input or failed step (a one-line message on stderr), 2 usage error.
Add `--debug` before the command to see the full traceback of a failure.

Each command imports what it runs inside its `_cmd_*` function: the only lazy imports in lab6, so that
`lab6 --help` and a usage error load no torch. OpenMP's wait policy is set once, by `import lab6`
(lab6/__init__.py), before any command loads torch.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import (
    DEFAULT_PROFILE,
    PROFILES,
    SAMPLERS,
    Config,
    build_config,
    check_device,
    check_finite,
    check_guidance_scale,
)
from .errors import CheckpointError, ConfigError, Lab6Error

TRUST_HELP = ("load evaluator checkpoints that pickle Python objects besides tensors (runs their code: only for "
              "files you trust; also LAB6_TRUST_CHECKPOINTS=1)")


def _add_trust(p) -> None:
    """--trust-checkpoint on a command that loads an evaluator."""
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


# ---------------------------------------------------------------- synth
def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="render a CLEVR-style dataset in the course's layout",
                       description="Render a synthetic CLEVR-style dataset in the iCLEVR layout "
                                   "(objects.json, train.json, test files, iclevr/*.png).")
    p.add_argument("--out", required=True, help="output folder, e.g. data/synth")
    p.add_argument("--scenes", type=int, default=6000, help="training scenes; each gives 3 images (default 6000)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed and options give identical files")
    p.add_argument("--size", default="64", metavar="SIDE|WxH",
                   help="image side in pixels, or WIDTHxHEIGHT such as 320x240 (the course's) (default 64)")
    p.add_argument("--look", default="default", metavar="NAME",
                   help="the renderer's look: default (what the shipped models know) or second (another light, "
                        "camera height, object size and share of metal: a stand-in for images unlike the default)")
    p.add_argument("--rgba", action="store_true", help="write RGBA PNGs (alpha opaque), as the course's files are")
    p.add_argument("--evaluator-from", default=None, metavar="CHECKPOINT",
                   help="copy this evaluator checkpoint into --out as checkpoint.pth, the course's evaluator's name "
                        "(e.g. pretrained/evaluator/checkpoint.pth): that root's judge, so `lab6 run` trains none")
    p.add_argument("--workers", type=int, default=0, help="processes (default 0 = all cores)")
    p.add_argument("--all-pairs", action="store_true",
                   help="let training scenes show every object pair (an evaluator's training set; "
                        "unseen_test is then not unseen)")
    p.add_argument("--binding", type=float, default=0.0, metavar="SHARE",
                   help="share of training scenes (0-1) drawn from new_test's binding patterns, such as one colour "
                        "in two shapes, never a test set (default 0)")
    p.add_argument("--like", default=None, metavar="TRAIN_JSON",
                   help="render exactly the file names and label sets of an existing train.json "
                        "(--scenes is then ignored; its test.json/new_test.json are reused when beside it)")
    _add_trust(p)
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args) -> int:
    """`lab6 synth`: check the options (and the --evaluator-from checkpoint), render, print a summary."""
    from .synth import look_config, write_dataset
    look_config(args.look)  # a bad name fails before torch loads
    if args.evaluator_from is not None and Path(args.evaluator_from).is_file():  # write_dataset names a missing one
        from .evaluator import load_checkpoint
        try:
            load_checkpoint(args.evaluator_from)  # a foreign file fails before anything is written
        except CheckpointError as e:
            raise CheckpointError(f"--evaluator-from {e}") from None
    info = write_dataset(args.out, scenes=args.scenes, seed=args.seed, size=args.size, workers=args.workers,
                         like=args.like, all_pairs=args.all_pairs, look=args.look, rgba=args.rgba, binding=args.binding,
                         evaluator=args.evaluator_from)
    judge = f"; evaluator {info['evaluator']}" if info["evaluator"] else ""
    print(f"{info['out']}: {info['train_images']} training images in {info['scenes']} scenes ({info['look']} look), "
          f"test sets {info['test_sets']}; rendered {info['rendered']} of {info['images']} images now{judge}")
    return 0


# ---------------------------------------------------------------- train-evaluator
def _add_train_evaluator(sub) -> None:
    p = sub.add_parser("train-evaluator", help="train the ResNet-18 evaluator on a dataset in the course layout",
                       description="Train a multi-label ResNet-18 (the course's evaluator architecture) and "
                                   "save it in the course's checkpoint format.")
    p.add_argument("--data", required=True, help="dataset root in the course layout, e.g. data/synth")
    p.add_argument("--also", action="append", default=[], metavar="DIR",
                   help="another dataset root whose training images join --data's, e.g. renders in another look "
                        "(repeatable)")
    p.add_argument("--out", default=None, help="checkpoint path (default <data>/evaluator.pth)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--epochs", type=int, default=None,
                   help="passes over the images (default 20; on a CPU the time budget ends it first)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget; the learning-rate schedule ends at it (default 9, 0 = none)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3, AdamW)")
    p.add_argument("--width", type=int, default=None,
                   help="channels of the first stage while training, zero-padded to the course's 64 when saved "
                        "(default: 64 on a GPU, 32 on a CPU: ~4x fewer operations; 64 with --init)")
    p.add_argument("--init", default=None, help="start from this evaluator checkpoint (fine-tuning)")
    p.add_argument("--force", action="store_true",
                   help="retrain even if a complete checkpoint for the same config and data exists")
    _add_trust(p)
    p.set_defaults(func=_cmd_train_evaluator)


def _cmd_train_evaluator(args) -> int:
    from .evaluator import load_checkpoint
    from .evaluator_train import EvaluatorTrainConfig, train_evaluator
    options = {"epochs": args.epochs, "max_minutes": args.max_minutes, "batch_size": args.batch_size, "lr": args.lr,
               "width": args.width, "init": args.init}
    if args.init is not None:
        load_checkpoint(args.init)  # a missing or foreign file fails before any image is read
    config = EvaluatorTrainConfig(seed=args.seed, **{k: v for k, v in options.items() if v is not None})
    train_evaluator(args.data, out=args.out, config=config, device=args.device, force=args.force,
                    also=args.also)
    return 0


# ---------------------------------------------------------------- train-checker
def _add_train_checker(sub) -> None:
    p = sub.add_parser("train-checker", help="train the count checker behind exact-scene accuracy",
                       description="Render scenes with duplicated and extra objects into --data (when its "
                                   "counts.json is missing) and train the ResNet-18 count checker on them.")
    p.add_argument("--data", required=True, help="folder of the checker's renders, e.g. data/checker")
    p.add_argument("--out", default=None, help="checkpoint path (default <data>/checker.pth)")
    p.add_argument("--scenes", type=int, default=12000, help="scenes to render when --data is empty (default 12000)")
    p.add_argument("--render-seed", type=int, default=2, help="scene seed of the renders (default 2)")
    p.add_argument("--workers", type=int, default=0, help="render processes (default 0: all cores)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--epochs", type=int, default=None, help="passes over the images (default 30)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget; the learning-rate schedule ends at it (default 0: none)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 128)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3, AdamW)")
    p.add_argument("--width", type=int, default=None, help="channels of the first stage (default 32)")
    p.add_argument("--init", default=None, help="start from this checker checkpoint (fine-tuning)")
    p.set_defaults(func=_cmd_train_checker)


def _cmd_train_checker(args) -> int:
    """Check the options, render the checker's scenes into --data if its counts.json is missing, then train."""
    from pathlib import Path

    from .checker import CountChecker
    from .checker_train import COUNTS_FILE, CheckerTrainConfig, train_checker, write_count_dataset
    from .devices import resolve_device
    options = {"epochs": args.epochs, "max_minutes": args.max_minutes, "batch_size": args.batch_size, "lr": args.lr,
               "width": args.width, "init": args.init}
    cfg = CheckerTrainConfig(seed=args.seed, **{k: v for k, v in options.items() if v is not None})
    resolve_device(args.device)
    if cfg.init is not None:
        CountChecker(cfg.init, device="cpu")  # a missing or foreign file fails before anything is rendered
    data = Path(args.data)
    if not (data / COUNTS_FILE).is_file():
        info = write_count_dataset(data, scenes=args.scenes, seed=args.render_seed, workers=args.workers)
        print(f"{info['out']}: {info['images']} checker images in {info['scenes']} scenes", flush=True)
    train_checker(data, out=args.out, config=cfg, device=args.device)
    return 0


# ---------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the conditional DDPM",
                       description="Train the conditional UNet with a profile's settings.")
    p.add_argument("--data", default=None, help="dataset root (default: data/iclevr if present, else data/synth)")
    p.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE,
                   help=f"settings profile (default {DEFAULT_PROFILE})")
    p.add_argument("--config", default=None, help="YAML file overriding the profile's fields")
    p.add_argument("--out", required=True, help="output folder for checkpoints, metrics and the export")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall-clock time")
    p.add_argument("--checkpoint-every", type=int, default=None, help="write checkpoint-{step}/ every N steps")
    p.add_argument("--resume", default=None, metavar="latest|PATH", help="resume from the latest or a given checkpoint")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=None, help="images per optimiser step and process")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="start from the weights of a model folder with the same architecture (fine-tuning)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl is still written)")
    _add_trust(p)
    p.set_defaults(func=_cmd_train)


def config_from_args(args) -> Config:
    """The profile, then --config, then the explicit command-line options."""
    return build_config(args.profile, args.config, output_dir=args.out, data_root=args.data, seed=args.seed,
                        device=args.device, max_steps=args.max_steps, max_minutes=args.max_minutes,
                        batch_size=args.batch_size, lr=args.lr, checkpoint_every=args.checkpoint_every,
                        init_from=args.init_from)


def _cmd_train(args) -> int:
    """`lab6 train`: train with a profile and write the run folder; 0 on success."""
    from .train import train
    train(config_from_args(args), resume=args.resume, progress=not args.no_progress, recipe=args.config)
    return 0


# ---------------------------------------------------------------- sample
def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images for a label file and score them",
                       description="Generate one 64x64 image per label set, write <out>/<name>/<i>.png, "
                                   "<out>/<name>_grid.png and <out>/<name>_metrics.json.")
    p.add_argument("--model", required=True, help="training output folder or save_pretrained folder")
    p.add_argument("--labels", required=True, help="label file: a JSON list of label sets (e.g. test.json)")
    p.add_argument("--out", required=True, help="output folder, e.g. images")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="sampler (default: the model's best)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's best)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--object-guidance", type=float, default=None, metavar="O",
                   help="composable guidance: one more term of weight O per object of sets of two or more, beside "
                        "the whole set's (0 = none; default: the model's)")
    p.add_argument("--shift-patches", action=argparse.BooleanOptionalAction, default=None,
                   help="move a patch model's patch grid by a few pixels at every step, so its seams do not add up "
                        "to a grain (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--evaluator", default=None, help="evaluator checkpoint (default: found automatically)")
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None, help="label sets sampled at once (default 64)")
    p.add_argument("--name", default=None, help="name of the outputs (default: the label file's name, e.g. test)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_trust(p)
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args) -> int:
    """`lab6 sample`: sample the label file, write the deliverables and print the accuracy."""
    from .data import read_label_file
    from .evaluator import Evaluator
    from .io import check_writable_dir, ensure_writable_dir
    from .sample import load_pipeline, sample_split
    label_path = Path(args.labels)
    sets = read_label_file(label_path)
    name = args.name or label_path.stem
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"--name {name!r}: expected a plain name such as 'test' (no folders)")
    check_device(args.device, "--device")
    if args.steps is not None and args.steps <= 0:
        raise ConfigError(f"--steps: must be > 0, got {args.steps}")
    if args.guidance is not None:
        check_guidance_scale(args.guidance, "--guidance")
    if args.object_guidance is not None and not 0 <= args.object_guidance < math.inf:
        raise ConfigError(f"--object-guidance: must be >= 0 (0 = none), got {args.object_guidance}")
    if args.batch_size is not None and args.batch_size <= 0:
        raise ConfigError(f"--batch-size: must be > 0, got {args.batch_size}")
    if not 0 <= args.seed <= 2**32 - len(sets):
        raise ConfigError(f"--seed: must be in 0..{2**32 - len(sets)} (image i uses seed + i), got {args.seed}")
    check_writable_dir(args.out)
    # Everything is loaded and checked before the output folder is created: a bad input leaves nothing behind.
    pipe = load_pipeline(args.model, args.device)
    limit = pipe.scheduler.config.num_train_timesteps
    if args.steps is not None and args.steps > limit:
        raise ConfigError(f"--steps: must be at most the model's {limit} training timesteps, got {args.steps}")
    evaluator = args.evaluator
    if evaluator is not None:  # named explicitly: a bad one is an error, not a skipped score
        evaluator = Evaluator(evaluator, device=args.device)
    ensure_writable_dir(args.out)
    batch_size = 64 if args.batch_size is None else args.batch_size
    m = sample_split(pipe, sets, args.out, name, evaluator=evaluator, seed=args.seed, sampler=args.sampler,
                     num_steps=args.steps, guidance_scale=args.guidance, batch_size=batch_size,
                     object_guidance_scale=args.object_guidance, shift_patches=args.shift_patches,
                     progress=not args.no_progress, data_root=label_path.parent, device=args.device,
                     label_file=str(label_path), model=str(args.model))
    acc = "n/a (no evaluator)" if m["accuracy"] is None else f"{m['accuracy']:.4f} ({m['hits']}/{m['labels']})"
    out = Path(args.out)
    print(f"{name}: accuracy {acc}; {m['images']} images in {out / name}, grid {out / (name + '_grid.png')} "
          f"[{m['sampler']}, {m['steps']} steps, guidance {m['guidance']:g}"
          + (f" + {m['object_guidance']:g} per object" if m["object_guidance"] else "")
          + (", shifted patches" if m["shift_patches"] else "") + f", seed {m['seed']}, {m['seconds']:.1f} s]")
    return 0


# ---------------------------------------------------------------- evaluate
def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a folder of <i>.png images against a label file",
                       description="Score images/<i>.png against label set i with the evaluator "
                                   "(the course's pooled top-k accuracy).")
    p.add_argument("--images", required=True, help="folder holding 0.png, 1.png, ...")
    p.add_argument("--labels", required=True, help="label file: a JSON list of label sets")
    p.add_argument("--evaluator", default=None, help="evaluator checkpoint (default: found automatically)")
    p.add_argument("--device", default=None, help="cpu or cuda")
    _add_trust(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    """Score DIR/0.png..{n-1}.png against a label file and print the course accuracy and the kinds of miss."""
    from pathlib import Path

    from PIL import Image

    from .data import load_image_folder, read_label_file
    from .evaluator import MISS_KINDS, RESOLUTION, Evaluator, summarize
    label_sets = read_label_file(args.labels)
    evaluator = Evaluator(args.evaluator, device=args.device)
    first = Path(args.images) / "0.png"
    resolution = RESOLUTION
    if first.is_file():
        try:
            with Image.open(first) as im:
                if im.size[0] == im.size[1]:
                    resolution = im.size[0]  # read as is; the evaluator resizes (and says so)
        except OSError:
            pass  # load_image_folder names the unreadable file
    images = load_image_folder(args.images, len(label_sets), resolution)
    counts = summarize(evaluator.breakdown(images, label_sets))
    hits, total = counts["hits"], counts["labels"]
    print(f"accuracy: {hits / total:.4f} ({hits}/{total})")
    print("misses: " + ", ".join(f"{kind} {counts[kind]}" for kind in MISS_KINDS) + f"  [evaluator: {evaluator.path}]")
    print(f"images showing an object no label asked for: {counts['with unrequested']} of {counts['images']}")
    return 0


# ---------------------------------------------------------------- run
def _add_run(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline: data, training, sampling, report",
                       description="Render the synthetic data if missing, find the evaluator (the shipped one "
                                   "for default synthetic data), execute the notebooks with papermill and write "
                                   "report.html (and report.pdf when Chromium is installed).")
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help=f"settings profile (default {DEFAULT_PROFILE}; with --model, the model's)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="grade this `lab6 train` export (e.g. a student's): notebooks 04-05 draw every figure from "
                        "it and notebook 03 (training) is skipped")
    p.add_argument("--data-root", default=None, help="dataset root (default: data/iclevr if present, else data/synth)")
    p.add_argument("--out", default=None, help="run folder (default outputs/<profile>)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--force", action="store_true", help="re-run notebooks whose outputs are already complete")
    p.add_argument("--max-steps", type=int, default=None, help="training steps of notebook 03 (default: the profile's)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="training time budget of notebook 03; the first of it and --max-steps ends training "
                        "(default: the profile's)")
    p.add_argument("--init-from", default=None, metavar="PATH|none",
                   help="weights notebook 03 starts from: an export, or 'none' for random weights (default: quick "
                        "fine-tunes pretrained/quick on data other than the default renders; else random weights)")
    p.add_argument("--recipe", default=None, metavar="YAML",
                   help="notebook 03's training settings over the profile (default: configs/<profile>-live.yaml "
                        "from random weights, configs/<profile>-finetune.yaml from a model, when they exist)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="sampler of notebooks 04-05 (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps of notebooks 04-05 (default: the model's)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance scale of notebooks 04-05, 1 = none (default: the model's)")
    p.add_argument("--no-ddpm-1000", action="store_true",
                   help="leave DDPM-1000 out of notebook 04's sampler comparison (quick: ~2 min on a 2-core CPU)")
    _add_trust(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from .run import RunConfig, run_pipeline
    if args.model is not None and args.profile is not None:
        raise ConfigError("--profile: leave it out with --model; the model's lab6_config.yaml names its profile")
    run_pipeline(RunConfig(profile=args.profile or DEFAULT_PROFILE, model=args.model, data_root=args.data_root,
                           run_dir=args.out, device=args.device, force=args.force, max_steps=args.max_steps,
                           max_minutes=args.max_minutes, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                           ddpm_1000=not args.no_ddpm_1000, init_from=args.init_from, recipe=args.recipe))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `lab6` argument parser with all sub-commands."""
    parser = argparse.ArgumentParser(prog="lab6", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lab6 {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_synth, _add_train_evaluator, _add_train_checker, _add_train, _add_sample, _add_evaluate, _add_run):
        add(sub)
    return parser


def check_finite_options(args: argparse.Namespace) -> None:
    """ConfigError naming the first option that parsed to NaN or inf (argparse's float() accepts 'nan' and 'inf')."""
    for dest, value in vars(args).items():
        check_finite(value, "--" + dest.replace("_", "-"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lab6` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_finite_options(args)
        if getattr(args, "trust_checkpoint", False):
            from .evaluator import trust_checkpoints
            trust_checkpoints()  # the environment variable: papermill's kernels inherit it
        return int(args.func(args) or 0)
    except Lab6Error as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
