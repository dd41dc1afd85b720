"""`instructsam eval`: run a model over a benchmark suite and score it, or score a predictions file.

Three modes:
  model:    --suite S --data FILE --images DIR --model DIR --out OUT   (resumable, shardable)
  scoring:  --suite S --data FILE --predictions FILE --out OUT         (no model is loaded)
  merge:    --suite S --data FILE --out OUT --merge [--num-shards N]   (after a sharded run)
See instructsam_core.evaluation.runner for sharding with torchrun and for resume.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from instructsam_core.commands import add_inference_layout_argument, add_sam3_config_argument
from instructsam_core.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on a benchmark suite, or score a predictions file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--suite", required=True, choices=["inst2seg", "reasonseg", "grefcoco", "roborefit", "refcoco"])
    parser.add_argument("--data", required=True, type=Path, help="the suite's data file (JSON list or JSON lines)")
    parser.add_argument("--images", type=Path, help="directory the records' image paths are relative to")
    parser.add_argument("--out", required=True, type=Path, help="output directory (resumes if it holds a run)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--model", help="model directory, or 'default' for the embedded model")
    mode.add_argument("--predictions", type=Path, help="score this predictions.jsonl instead of running a model")
    add_sam3_config_argument(parser)
    add_inference_layout_argument(parser)
    mode.add_argument("--merge", action="store_true", help="merge the shard files in --out and score them")
    parser.add_argument("--limit", type=int, help="only the first N records")
    parser.add_argument("--threshold", type=float, help="score threshold (default: the suite's, 0.3 or 0.5)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: bf16 on GPUs, fp32 on CPU")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip malformed records and, when running a model, records whose image is missing "
                        "(counted) instead of failing")
    parser.add_argument("--shard", type=int, help="this process's shard (default: RANK under torchrun, else 0)")
    parser.add_argument("--num-shards", type=int, help="number of shards (default: WORLD_SIZE under torchrun, else 1)")
    parser.add_argument(
        "--phrase-mode",
        choices=["generate", "text", "auto"],
        default="generate",
        help="generate: the model names the phrases (the release's protocol, default); text: the "
        "query's target phrase is given (single forward pass); auto: the predictor decides",
    )
    parser.add_argument("--max-instances", type=int, default=100, help="instances kept per query (default 100)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generation length limit (default 128)")
    parser.add_argument("--overlays", type=int, default=3, help="best and worst queries to draw (default 3 each)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instructsam_core.evaluation.predictions import PREDICTIONS_NAME, read_predictions
    from instructsam_core.evaluation.runner import merge_shards, shard_from_args
    from instructsam_core.evaluation.suites import read_suite

    if args.threshold is not None and not 0.0 <= args.threshold < 1.0:
        raise UserError(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.limit is not None and args.limit <= 0:
        raise UserError(f"--limit must be positive, got {args.limit}")
    if args.images is not None and not args.images.is_dir():
        raise UserError(f"--images {args.images} is not a directory")
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {out}: {error.strerror}") from None

    data = read_suite(args.suite, args.data, args.images, skip_bad=args.skip_bad, limit=args.limit)
    if args.images is not None and (args.model is not None or args.merge):
        # A model run needs every image; find a missing one now, not when its query comes up.
        from instructsam_core.evaluation.runner import drop_missing_images

        data = drop_missing_images(data, args.images, args.skip_bad)
    for index, reason in data.skipped[:5]:
        print(f"skipped record {index}: {reason}")
    if len(data.skipped) > 5:
        print(f"... {len(data.skipped) - 5} more records skipped")

    if args.predictions is not None:
        predictions = read_predictions(args.predictions)
    elif args.merge:
        count = args.num_shards or _shards_from_run_json(out)
        merge_shards(out, data.queries, count)
        predictions = read_predictions(out / PREDICTIONS_NAME)
    else:
        if args.images is None:
            raise UserError("--images DIR is needed to run a model")
        if args.max_instances < 1:
            raise UserError(f"--max-instances must be at least 1, got {args.max_instances}")
        if args.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        shard = shard_from_args(args.shard, args.num_shards)
        if not _run_model(args, data, shard):
            return 0
        if shard.count > 1:
            # Several shards may finish at once: the one that creates the lock merges and scores.
            lock = out / "merge.lock"
            try:
                os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                print(f"another shard is merging in {out} (if none is, delete {lock} and run with --merge)")
                return 0
            try:
                merge_shards(out, data.queries, shard.count)
                _score_and_report(args, data, read_predictions(out / PREDICTIONS_NAME))
            finally:
                lock.unlink(missing_ok=True)
            return 0
        predictions = read_predictions(out / PREDICTIONS_NAME)
    _score_and_report(args, data, predictions)
    return 0


def _score_and_report(args: argparse.Namespace, data, predictions) -> None:
    """metrics.json, metrics.md, overlays, and a one-line summary on stdout."""
    from instructsam_core.evaluation.overlays import write_overlays
    from instructsam_core.evaluation.scoring import per_query_ious, score, write_metrics

    out: Path = args.out
    metrics, evals = score(data, predictions, args.threshold)
    write_metrics(out, metrics)
    threshold = metrics["threshold"]
    if args.overlays > 0 and args.images is not None:
        ious = per_query_ious(evals, threshold, data.suite.empty_iou)
        write_overlays(out, args.images, data.queries, evals, ious, threshold, args.overlays)
    summary = {k: metrics[k] for k in ("suite", "num_queries", "giou", "ciou", "mAP", "AP50", "AP75")}
    print(json.dumps(summary))
    print(f"wrote {out / 'metrics.json'} and {out / 'metrics.md'}")


def _shards_from_run_json(out: Path) -> int:
    path = out / "run.json"
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["num_shards"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"cannot tell the number of shards from {path}; pass --num-shards") from None


def _run_model(args: argparse.Namespace, data, shard) -> bool:
    """Run this shard; True when every shard's queries are finished (ready to merge/score)."""
    from instructsam_core.evaluation.predictions import PredictionsWriter, shard_file_name
    from instructsam_core.evaluation.runner import (
        check_run_config,
        device_for_shard,
        run_queries,
        shard_queries,
        shards_complete,
        write_run_config,
    )
    from instructsam_core.model_paths import resolve_model_dir
    from instructsam_core.predictor import Predictor
    from instructsam_core.training.checkpoint import file_sha256

    model_dir = resolve_model_dir(args.model)
    config = {
        "suite": args.suite,
        "data": str(args.data.resolve()),
        "data_sha256": file_sha256(args.data),
        "model": str(model_dir.resolve()),
        "sam3_config": None if args.sam3_config is None else str(args.sam3_config.resolve()),
        "inference_layout": args.inference_layout,  # None: the model's own
        "limit": args.limit,
        "skip_bad": bool(args.skip_bad),
        "phrase_mode": args.phrase_mode,
        "max_instances": args.max_instances,
        "max_new_tokens": args.max_new_tokens,
        "num_shards": shard.count,
    }
    check_run_config(args.out, config)  # a resume with other settings is refused before the model loads
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    mine = shard_queries(data.queries, shard)
    path = args.out / shard_file_name(shard.index, shard.count)
    device = device_for_shard(args.device)
    predictor = Predictor.from_pretrained(
        model_dir, device=device, dtype=args.dtype, threshold=0.0, max_instances=args.max_instances,
        sam3_config=args.sam3_config, inference_layout=args.inference_layout,
        max_new_tokens=args.max_new_tokens,
        auto_phrase=args.phrase_mode == "auto",
    )
    write_run_config(args.out, config)  # only now: a model that fails to load leaves --out unbound
    with PredictionsWriter(path) as writer:
        run_queries(predictor, mine, args.images, writer, args.phrase_mode, progress=not args.quiet)
    if shard.count == 1:
        return True
    complete, problems = shards_complete(args.out, data.queries, shard.count)
    if not complete:
        print(f"shard {shard.index} of {shard.count} finished; waiting for: {'; '.join(problems)}")
        print("the last shard to finish merges and scores (or run again with --merge)")
        return False
    return True
