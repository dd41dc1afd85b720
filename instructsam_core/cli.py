"""The `instructsam` command line: a thin dispatcher over `instructsam_core.commands.*`.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Errors a user can fix are raised as `UserError` and printed as one line.

Other installed packages add commands through the entry-point group `instructsam.commands`
(name: the command, value: `module:register`, the same protocol); the core imports none of them
by name. instructsam_ros contributes `annotate-bag` this way (setup.py).
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
}
ENTRY_POINT_GROUP = "instructsam.commands"
# Commands other packages contribute, and what to install when they are missing: a hint only,
# nothing here is imported.
INSTALL_HINTS = {
    "annotate-bag": "it comes with the ROS tools (instructsam_ros) and their extra: pip install -e '.[ros]' in a "
                    "checkout, or pip install 'instructsam[ros]'",
}


def contributed_commands() -> dict:
    """Command name -> entry point, for every command an installed package contributes (a name
    of a built-in command is never taken over). Only the metadata is read: nothing is imported."""
    from importlib.metadata import entry_points

    found = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in SUBCOMMANDS:
            found.setdefault(entry.name, entry)
    return dict(sorted(found.items()))


def _register_contributed(subparsers, name: str, entry, required: bool) -> None:
    """Add a contributed command's parser. One that cannot be loaded is listed as unavailable in
    --help, and is an error with the install hint when it is the command being run."""
    try:
        register = entry.load()
    except ImportError as error:
        hint = INSTALL_HINTS.get(name, f"its package ({entry.value.split(':')[0]}) does not import")
        if required:
            raise UserError(f"{hint} ({error})") from None
        subparsers.add_parser(name, help=f"unavailable: {hint}")
        return
    register(subparsers)


def build_parser(only: str | None = None, contributed: dict | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructsam", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            # Still list every command in --help, but only build the one being run.
            subparsers.add_parser(name, help=f"see `instructsam {name} --help`")
            continue
        module = importlib.import_module(f"instructsam_core.commands.{module_name}")
        module.register(subparsers)
    for name, entry in (contributed_commands() if contributed is None else contributed).items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=f"see `instructsam {name} --help`")
            continue
        _register_contributed(subparsers, name, entry, required=name == only)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        if name in SUBCOMMANDS:
            # A built-in command: no package metadata is read.
            parser = build_parser(name, contributed={})
        else:
            contributed = contributed_commands()
            if name is not None and name not in contributed and name in INSTALL_HINTS:
                raise UserError(f"this installation has no command {name!r}: {INSTALL_HINTS[name]}")
            parser = build_parser(name if name in contributed else None, contributed)
    except UserError as error:
        print(f"instructsam {name}: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"instructsam {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"instructsam {args.command}: interrupted", file=sys.stderr)
        return 130


def quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, info notices) out of command output (and out
    of the ROS node's log, where launch shows a bar as an empty line).

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
