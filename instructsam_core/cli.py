"""The `instructsam` command line: a thin dispatcher over `instructsam_core.commands.*`.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Errors a user can fix are raised as `UserError` and printed as one line.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from instructsam_core.errors import UserError

# Subcommand name -> module under instructsam_core.commands. Imported lazily so that
# `instructsam synth` does not pay for importing torch-heavy modules it never uses.
SUBCOMMANDS = {
    "predict": "predict",
    "tiny": "tiny",
    "synth": "synth",
    "eval": "evaluate",
    "bench": "bench",
    "train": "train",
    "merge-lora": "merge_lora",
    "annotate-bag": "annotate_bag",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructsam", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            # Still list every command in --help, but only build the one being run.
            subparsers.add_parser(name, help=f"see `instructsam {name} --help`")
            continue
        module = importlib.import_module(f"instructsam_core.commands.{module_name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"instructsam {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"instructsam {args.command}: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, info notices) out of command output.

    Through the variables transformers and huggingface_hub read when they are imported (a value
    the user set is kept), so that a command that never loads a model does not import them just
    for this (0.5-1 s); only if they are imported already (main() called in-process) directly."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
