"""`instructsam train`: run a training recipe (one process, or one per GPU/CPU under torchrun).

    instructsam train --recipe training/synthetic.yaml --data-root DATA --output runs/synth [--resume]
    torchrun --nproc_per_node 8 -m instructsam_core.cli train --recipe training/stage1.yaml ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from instructsam_core.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train with a recipe (training/*.yaml)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, type=Path, help="recipe YAML (see training/)")
    parser.add_argument("--data-root", required=True, type=Path,
                        help="directory the mixture's dataset paths and images are relative to")
    parser.add_argument("--output", required=True, type=Path,
                        help="run directory: checkpoints/, log.jsonl, loss_curve.png, final/")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint in --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    # Test hook: SIGKILL the process right after this optimizer step (a crash at a known point).
    parser.add_argument("--kill-after-step", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instructsam_core.training.recipe import load_recipe
    from instructsam_core.training.trainer import Trainer

    recipe = load_recipe(args.recipe)
    if not args.data_root.is_dir():
        raise UserError(f"--data-root {args.data_root} is not a directory")
    if args.output.exists() and not args.output.is_dir():
        raise UserError(f"--output {args.output} exists and is not a directory")
    summary = Trainer(recipe, args.data_root, args.output, resume=args.resume, progress=not args.quiet,
                      kill_after_step=args.kill_after_step).run()
    if summary.pop("is_main_process"):
        print(json.dumps({"output": str(args.output), **summary}))
    return 0
