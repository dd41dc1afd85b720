"""`instructsam tiny`: write a random-init tiny model directory (tests, demos, benchmarks)."""
from __future__ import annotations

import argparse
from pathlib import Path

from instructsam_core.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("tiny", help="write a tiny random-init model directory")
    parser.add_argument("--out", required=True, type=Path, help="directory to create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instructsam_core.tiny import write_tiny_model

    if args.out.exists() and (not args.out.is_dir() or (any(args.out.iterdir()) and not args.force)):
        raise UserError(f"{args.out} exists and is not an empty directory (use --force to overwrite)")
    path = write_tiny_model(args.out, seed=args.seed)
    print(f"wrote a tiny random-init InstructSAM model to {path}")
    return 0
