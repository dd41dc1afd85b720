"""`instructsam train`: run a training recipe (one process, or one per GPU/CPU under torchrun).

    instructsam train --recipe training/synthetic.yaml --data-root DATA --output runs/synth [--resume]
    torchrun --nproc_per_node 8 -m instructsam_core.cli train --recipe training/stage1.yaml ...
    instructsam train --recipe training/stage1.yaml --mixture data/stage1.txt --data-root DATA ...
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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
    parser.add_argument("--mixture", type=Path, default=None,
                        help="data mixture in place of the recipe's data.mixture: a YAML mixture or the release's "
                        "list (data/stage1.txt: one 'file.json repeat' per line)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint in --output")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out training samples that cannot be used (every one is checked before the "
                        "first step) instead of stopping; the same as data.skip_bad: true in the recipe")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    # Test hook: SIGKILL the process right after this optimizer step (a crash at a known point).
    parser.add_argument("--kill-after-step", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instructsam_core.training.recipe import load_recipe
    from instructsam_core.training.trainer import Trainer

    recipe = load_recipe(args.recipe)
    if args.skip_bad:
        recipe.values["data"]["skip_bad"] = True
    if args.mixture is not None:
        if not args.mixture.is_file():
            raise UserError(f"--mixture {args.mixture} does not exist")
        recipe.values["data"]["mixture"] = str(args.mixture.resolve())
    if not args.data_root.is_dir():
        raise UserError(f"--data-root {args.data_root} is not a directory")
    if args.output.exists() and not args.output.is_dir():
        raise UserError(f"--output {args.output} exists and is not a directory")
    if _should_launch(recipe):
        return _launch_local_processes(recipe["cpu_processes"], args)
    summary = Trainer(recipe, args.data_root, args.output, resume=args.resume, progress=not args.quiet,
                      kill_after_step=args.kill_after_step).run()
    if summary.pop("is_main_process"):
        print(json.dumps({"output": str(args.output), **summary}))
    return 0


def _should_launch(recipe) -> bool:
    """A CPU recipe asking for several processes, started without torchrun: start them here."""
    import torch

    return recipe["cpu_processes"] > 1 and "WORLD_SIZE" not in os.environ and not torch.cuda.is_available()


def _launch_local_processes(count: int, args: argparse.Namespace) -> int:
    """Re-run this command under `torch.distributed.run --standalone` with `count` local processes
    (one BLAS thread each unless OMP_NUM_THREADS says otherwise); returns their exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(count),
               "-m", "instructsam_core.cli", "train", "--recipe", str(args.recipe), "--data-root", str(args.data_root),
               "--output", str(args.output)]
    if args.resume:
        command.append("--resume")
    if args.skip_bad:
        command.append("--skip-bad")
    if args.mixture is not None:
        command += ["--mixture", str(args.mixture)]
    if args.quiet:
        command.append("--quiet")
    if args.kill_after_step is not None:
        command += ["--kill-after-step", str(args.kill_after_step)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        result = subprocess.run(command, env=env)
    except KeyboardInterrupt:
        return 130
    if result.returncode != 0:
        raise UserError(f"training processes exited with status {result.returncode} (see the messages above)")
    return 0
