"""`instructsam bench`: median latency per inference stage and per flow."""
from __future__ import annotations

import argparse
import tempfile

from instructsam_core.commands import add_inference_layout_argument, add_sam3_config_argument
from instructsam_core.errors import UserError

MAX_PIXELS_LIMIT = 1 << 30  # the bound a model directory's preprocessor_config.json may give


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="time each inference stage (random weights are fine)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model directory or 'default'")
    add_sam3_config_argument(parser)
    add_inference_layout_argument(parser)
    source.add_argument("--config", choices=["tiny", "full"], help="random-init architecture: tiny, or the real 2B size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-pixels", type=int, default=None, help="VLM image budget in pixels")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0:
        raise UserError("--repeats must be >= 1 and --warmup >= 0")
    if not (16 <= args.width <= 8192 and 16 <= args.height <= 8192):
        raise UserError("--width/--height must be between 16 and 8192")
    if args.max_pixels is not None and not 1 <= args.max_pixels <= MAX_PIXELS_LIMIT:
        raise UserError(f"--max-pixels must be a positive number of pixels (at most {MAX_PIXELS_LIMIT}), "
                        f"got {args.max_pixels}")
    import torch

    from instructsam_core.benchmark import run_benchmark
    from instructsam_core.modeling import InstructSamForSegmentation
    from instructsam_core.predictor import Predictor, check_device, pick_dtype
    from instructsam_core.processing import InstructSamProcessor
    from instructsam_core.tiny import build_tokenizer, full_config, write_tiny_model

    device = check_device(args.device)
    if args.model:
        predictor = Predictor.from_pretrained(args.model, device=device, dtype=args.dtype, sam3_config=args.sam3_config)
    elif args.config == "tiny":
        with tempfile.TemporaryDirectory() as tmp:
            predictor = Predictor.from_pretrained(write_tiny_model(tmp), device=device, dtype=args.dtype)
    else:
        dtype = pick_dtype(device, args.dtype)
        # Token ids come from the small offline tokenizer (they all fit in the real vocabulary);
        # only sequence lengths matter for timing.
        tokenizer = build_tokenizer()
        config = full_config(tokenizer)
        config._attn_implementation = "sdpa"
        print(f"building the full-size architecture with random weights ({dtype}) ...", flush=True)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = InstructSamForSegmentation(config)
        finally:
            torch.set_default_dtype(previous)
        processor = InstructSamProcessor(tokenizer, model.config, max_pixels=args.max_pixels or 1280 * 32 * 32)
        predictor = Predictor(model.eval(), processor)
    if args.max_pixels:
        predictor.processor.max_pixels = args.max_pixels
    if args.inference_layout:  # the stages' layout; the flows are timed in both
        predictor.model.config.inference_layout = args.inference_layout
    report = run_benchmark(predictor, args.width, args.height, repeats=args.repeats, warmup=args.warmup,
                           verbose=args.config == "full" or args.device != "cpu")
    print(report.format())
    return 0
