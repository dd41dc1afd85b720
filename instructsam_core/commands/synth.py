"""`instructsam synth`: write the procedurally generated shapes data set (see instructsam_core.synth)."""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic data set (images, train.json, inst2seg.json)",
        description=(
            "Writes DIR/images/*.png, DIR/train.json (training records), DIR/inst2seg.json (benchmark "
            "records) and DIR/scenes.json. Deterministic per (--seed, --split); use --split val for "
            "held-out evaluation data."
        ),
    )
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--n", type=int, default=100, help="number of images (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"],
                        help="independent random stream per split (default train)")
    parser.add_argument("--near-misses", type=int, default=0, metavar="K",
                        help="add K (0..3) hard-negative phrases to every instseg training record: absent "
                             "categories one attribute away from an object in the image (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instructsam_core.synth import generate

    counts = generate(args.out, args.n, seed=args.seed, split=args.split, progress=not args.quiet,
                      near_miss_phrases=args.near_misses)
    print(json.dumps({"out": str(args.out), "split": args.split, "seed": args.seed, **counts}))
    return 0
