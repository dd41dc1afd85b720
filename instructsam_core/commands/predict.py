"""`instructsam predict`: one image + one instruction -> instances.json and overlay.png."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from instructsam_core.commands import add_inference_layout_argument, add_sam3_config_argument
from instructsam_core.errors import UserError
from instructsam_core.tokens import check_instruction


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="segment every instance an instruction means in one image")
    parser.add_argument("--model", default="default", help="model directory, or 'default' for the embedded model")
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--instruction", required=True)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--threshold", type=float, default=0.3, help="score threshold in [0, 1]")
    parser.add_argument("--max-instances", type=int, default=100)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    add_sam3_config_argument(parser)
    add_inference_layout_argument(parser)
    parser.add_argument("--phrases", nargs="+", default=None,
                        help="target phrases: skip decoding and run the single-forward path")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Arguments and the image are checked before the model side (torch, transformers: most of
    # the command's start-up time) is imported, so a mistake is reported at once.
    from instructsam_core.images import load_image

    if not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file, not a directory")
    instruction = check_instruction(args.instruction)
    image = load_image(args.image)

    from instructsam_core.masks import encode_mask
    from instructsam_core.predictor import Predictor
    from instructsam_core.visualize import draw_overlay, save_png

    predictor = Predictor.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, threshold=args.threshold, max_instances=args.max_instances,
        sam3_config=args.sam3_config, inference_layout=args.inference_layout,
    )
    prediction = predictor.predict(image, instruction, phrases=args.phrases)
    args.out.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "phrase": inst.phrase,
            "score": round(inst.score, 6),
            "bbox": inst.bbox_xywh,
            "segmentation": encode_mask(inst.mask),
            "area": inst.area,
        }
        for inst in prediction.instances
    ]
    (args.out / "instances.json").write_text(json.dumps(records, indent=1) + "\n")
    save_png(args.out / "overlay.png", draw_overlay(image, prediction.instances))
    height, width = prediction.image_size
    print(f"{len(records)} instance(s) for {prediction.instruction!r} on a {width}x{height} image; "
          f"phrases: {', '.join(prediction.phrases) or '(none)'}; "
          f"inference layout: {predictor.model.config.inference_layout}")
    for record in records:
        x, y, w, h = record["bbox"]
        print(f"  {record['phrase']:<30} score {record['score']:.3f}  box x={x:.0f} y={y:.0f} w={w:.0f} h={h:.0f}  area {record['area']}")
    print(f"wrote {args.out / 'instances.json'} and {args.out / 'overlay.png'}")
    return 0
