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
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise UserError(f"--out {out} is not empty (use --force to overwrite)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --out {out}: {error.strerror or error}") from None

    from instructsam_core.tiny import write_tiny_model

    try:
        path = write_tiny_model(out, seed=args.seed)
    except OSError as error:
        raise UserError(f"cannot write the model to {out}: {error.strerror or error}") from None
    print(f"wrote a tiny random-init InstructSAM model to {path}")
    return 0
