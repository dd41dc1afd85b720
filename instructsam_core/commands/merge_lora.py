"""`instructsam merge-lora`: fold a LoRA adapter (and the modules trained with it) into a model.

Used between the two training stages: stage 2 starts from stage 1's merged model.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from instructsam_core.commands import add_sam3_config_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser("merge-lora", help="merge a LoRA adapter into its base model",
                                   description=__doc__)
    parser.add_argument("--model", required=True, help="base model directory (or 'default')")
    parser.add_argument("--adapter", required=True, type=Path, help="adapter directory written by a LoRA run")
    parser.add_argument("--out", required=True, type=Path, help="new model directory to write")
    add_sam3_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instructsam_core.training.lora import merge_adapter

    out = merge_adapter(args.model, args.adapter, args.out, sam3_config=args.sam3_config)
    print(f"wrote the merged model to {out}")
    return 0
