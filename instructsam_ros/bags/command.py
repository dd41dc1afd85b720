"""`instructsam annotate-bag`: segment every frame of recorded image topics, offline, into a new bag.

Contributed to the `instructsam` command line through the entry point `instructsam.commands`
(setup.py), with the core's command protocol (`register(subparsers)`, `func(args) -> int`). The
work is done by `instructsam_ros.bags.annotate` (rosbags, no ROS installation needed), imported
when the command runs, so `--help` works without rosbags; the model is loaded exactly as
`instructsam predict` loads it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from instructsam_core.commands import add_inference_layout_argument
from instructsam_core.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "annotate-bag",
        help="segment every frame of image topics in a rosbag2/MCAP recording into a new bag + COCO JSON",
        description="Reads a rosbag2 directory (sqlite3 or MCAP) or a single .mcap/.db3 file and writes a new "
                    "rosbag2 directory OUT with all original messages plus, per image topic, <topic>/segmentation "
                    "(instructsam_ros/msg/InstanceSegmentation), <topic>/label_image (mono16) and optionally "
                    "<topic>/overlay, at the frames' log times with their headers; OUT/coco.json holds every "
                    "instance. Every message of the input's files is copied (a bag whose index lists messages its "
                    "files lack is refused; so is a run that annotates no frame, with the reason). OUT is written "
                    "as the input's ROS 2 distribution writes bags (--ros-distro). Killed runs resume from "
                    "OUT.partial/ when the same command is run again.",
    )
    parser.add_argument("--bag", required=True, type=Path, help="rosbag2 directory, or a .mcap or .db3 file")
    parser.add_argument("--topics", required=True, nargs="+", metavar="TOPIC",
                        help="image topics (sensor_msgs/msg/Image or CompressedImage)")
    parser.add_argument("--instruction", required=True, help="what to segment, as for `instructsam predict`")
    parser.add_argument("--phrases", nargs="+", default=None,
                        help="target phrases: skip decoding and run the single-forward path on every frame")
    parser.add_argument("--out", required=True, type=Path, help="output rosbag2 directory (must not exist)")
    parser.add_argument("--model", default="default", help="model directory, or 'default' for the embedded model")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--threshold", type=float, default=0.3, help="score threshold in [0, 1]")
    parser.add_argument("--max-instances", type=int, default=100)
    add_inference_layout_argument(parser)
    parser.add_argument("--start", type=float, default=None, help="seconds from the bag's start (first frame kept)")
    parser.add_argument("--end", type=float, default=None, help="seconds from the bag's start (frames before it)")
    parser.add_argument("--every", type=int, default=1, help="annotate every N-th frame of each topic")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="frames of one topic per model call (faster); 1 gives exactly `instructsam predict`'s "
                             "results, larger batches differ from them only in float rounding")
    parser.add_argument("--overlay", action="store_true", help="also write <topic>/overlay (rgb8)")
    parser.add_argument("--storage", choices=["sqlite3", "mcap"], default=None,
                        help="output storage (default: the input's)")
    parser.add_argument("--ros-distro", choices=["humble", "iron", "jazzy", "kilted"], default=None,
                        help="write the output as this distribution's rosbag2 does (metadata version 5, 7, 9, 9; "
                             "QoS as one string up to Iron, as a list from Jazzy), so its `ros2 bag` reads it "
                             "(default: the input's distribution, or the oldest that writes the input's metadata "
                             "version; Humble's for a bare file that names none)")
    parser.add_argument("--compression", choices=["none", "zstd", "lz4"], default=None,
                        help="MCAP: compression of its chunks (default zstd); sqlite3: zstd as rosbag2 compresses "
                             "(default none; lz4 is MCAP only)")
    parser.add_argument("--compression-mode", choices=["file", "message"], default=None,
                        help="sqlite3 with --compression zstd: the whole file (default, <name>.db3.zstd) or each "
                             "message, as `ros2 bag record --compression-mode` does")
    parser.add_argument("--max-pixels", type=int, default=4096 * 4096, help="frames with more pixels are skipped")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT, and discard a partial run of other settings")
    parser.add_argument("--io-threads", choices=["auto", "on", "off"], default="auto",
                        help="read and write the bag in threads beside the model (auto: on when the model leaves a "
                             "core idle - cuda devices, or fewer torch threads than cores; off when the model "
                             "uses every core, where the threads slow it down)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Arguments, the bag and its topics are checked before the model side (torch, transformers)
    # is imported: the bags package imports neither, and loads the model only when a frame needs it.
    try:
        from instructsam_ros.bags.annotate import annotate_bag
        from instructsam_ros.bags.options import AnnotateOptions, check_options
        from instructsam_ros.bags.summary import format_summary
    except ImportError as error:
        raise UserError(f"annotate-bag needs rosbags and rosbags-image: pip install -e '.[ros]' ({error})") from None
    from instructsam_core.tokens import check_instruction

    options = AnnotateOptions(
        bag=args.bag, out=args.out, topics=list(args.topics), instruction=check_instruction(args.instruction),
        phrases=args.phrases, model=args.model, device=args.device, dtype=args.dtype, threshold=args.threshold,
        max_instances=args.max_instances, inference_layout=args.inference_layout, start=args.start, end=args.end,
        every=args.every, batch_size=args.batch_size, overlay=args.overlay, storage=args.storage,
        ros_distro=args.ros_distro, compression=args.compression, compression_mode=args.compression_mode,
        overwrite=args.overwrite, max_pixels=args.max_pixels, progress=not args.no_progress,
        threads={"auto": None, "on": True, "off": False}[args.io_threads],
    )
    check_options(options)

    def load_predictor():
        from instructsam_core.predictor import Predictor  # the loading `instructsam predict` uses

        return Predictor.from_pretrained(options.model, device=options.device, dtype=options.dtype,
                                         threshold=options.threshold, max_instances=options.max_instances,
                                         inference_layout=options.inference_layout)

    try:
        summary = annotate_bag(options, load_predictor)
    except KeyboardInterrupt:
        print(f"instructsam annotate-bag: interrupted; run the same command again to resume "
              f"({args.out.with_name(args.out.name + '.partial')} keeps the finished frames)")
        return 130
    for line in format_summary(summary):
        print(line)
    return 0
