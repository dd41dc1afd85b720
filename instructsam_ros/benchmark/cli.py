"""Measure segment_node over real DDS, the way ros2_benchmark reports perception nodes.

The node runs in its own process (as deployed); this process publishes camera frames at a
fixed rate and receives the results. For each input size it reports:
  * end-to-end latency (image stamp -> result received here), median and p99, at each rate;
  * drops (frames without a result) at each rate;
  * model time (the predictor call, from the result message) and the node's overhead:
    end-to-end minus model time (transport both ways, decoding, conversion, publishing, and
    waiting for the model when a frame arrives while it is busy), plus the in-node part alone;
  * the peak rate with under 5 % dropped frames (binary search over the rate) (latency.py).

  python -m instructsam_ros.benchmark --model tiny --device cpu --sizes 640x480,1280x720

With --cameras 1,2,4 it compares, for each camera count N in the same run, one node serving N
cameras (one model, frames of all cameras batched into one model call) with N separate nodes
of one camera each (N models): aggregate results per second, each camera's results per second
and end-to-end latency (median, p99), drops, and the memory of the node processes (RSS, and
PSS, which counts a shared library page once). Every camera publishes at --rate (cameras.py).

  python -m instructsam_ros.benchmark --model default --cameras 1,2,4 --rate 30 --sizes 640x480

With --depth it measures the 3-D step (depth.py): one node with depth:=true, ten squares
of known depth, colour-only / depth / depth with a point-cloud subscriber alternating in the
same run (--repeats rounds of --seconds each, at --depth-rate), the node's own 3-D step time
per frame and its in-node overhead with and without depth.

  python -m instructsam_ros.benchmark --depth --model default --threshold 0 --sizes 640x480 --seconds 6
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from instructsam_core.errors import UserError
from instructsam_ros.benchmark.cameras import cameras_markdown, run_cameras
from instructsam_ros.benchmark.depth import markdown as depth_markdown
from instructsam_ros.benchmark.depth import run_depth
from instructsam_ros.benchmark.latency import markdown as latency_markdown
from instructsam_ros.benchmark.latency import run_latency
from instructsam_ros.benchmark.session import hardware
from instructsam_ros.dds.profiles import use_large_data_profile


def _cameras(text: str) -> list[int]:
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"camera counts look like 1,2,4; got {text!r}") from None
    if any(c < 1 or c > 16 for c in counts):
        raise argparse.ArgumentTypeError(f"camera counts must be in 1..16, got {text}")
    return counts


def _sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            w, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"sizes look like 640x480,1280x720; got {item!r}") from None
        if not (16 <= w <= 4096 and 16 <= h <= 4096):
            raise argparse.ArgumentTypeError(f"size {item} is outside 16x16 .. 4096x4096")
        sizes.append((w, h))
    return sizes


def _rates(text: str) -> list[float]:
    rates = [float(v) for v in text.split(",")]
    if any(r <= 0 or r > 1000 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be in (0, 1000] Hz, got {text}")
    return rates


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", "42")  # a domain of its own unless the user picks one
    use_large_data_profile()
    scratch = Path(tempfile.mkdtemp(prefix="instructsam_bench_"))
    model = args.model
    if model == "tiny":
        from instructsam_core.tiny import write_tiny_model

        model = str(write_tiny_model(scratch / "tiny", seed=0))
        model_name = "tiny random model (write_tiny_model, seed 0)"
    else:
        from instructsam_core.model_paths import resolve_model_dir

        resolve_model_dir(model)  # a clear error before any process starts
        model_name = model
    if args.cameras:
        report, table = run_cameras(args, model, model_name, scratch), cameras_markdown
    elif args.depth:
        report, table = run_depth(args, model, model_name, scratch, hardware()), depth_markdown
    else:
        report, table = run_latency(args, model, model_name, scratch), latency_markdown
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(table(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructsam_ros.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (written on the fly), 'default', or a model directory")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--sizes", type=_sizes, default=_sizes("640x480,1280x720"))
    parser.add_argument("--rates", type=_rates, default=_rates("10,30"))
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per rate")
    parser.add_argument("--peak-steps", type=int, default=5, help="bisection steps for the peak rate")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--json", help="also write the full report as JSON here")
    parser.add_argument("--cameras", type=_cameras, help="camera counts, e.g. 1,2,4: one node of N cameras against N "
                        "nodes of one camera (at the first of --sizes, every camera at --rate)")
    parser.add_argument("--rate", type=float, default=30.0, help="with --cameras: frames per second of every camera")
    parser.add_argument("--depth", action="store_true", help="measure the 3-D step: colour only, colour + depth and "
                        "colour + depth + point cloud in the same run (see instructsam_ros/benchmark/depth.py)")
    parser.add_argument("--depth-rate", type=float, default=5.0, help="with --depth: frames per second (below the model's capacity)")
    parser.add_argument("--repeats", type=int, default=3, help="with --depth: rounds of the three phases")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.seconds <= 0 or args.peak_steps < 1:
        parser.error("--seconds must be > 0 and --peak-steps >= 1")
    if not 0 < args.rate <= 1000:
        parser.error(f"--rate must be in (0, 1000] Hz, got {args.rate}")
    if not 0 < args.depth_rate <= 1000 or args.repeats < 1:
        parser.error("--depth-rate must be in (0, 1000] Hz and --repeats >= 1")
    if args.depth and args.cameras:
        parser.error("--depth and --cameras are separate measurements: give one of them")
    try:
        return run(args)
    except UserError as error:
        print(f"benchmark: error: {error}", file=sys.stderr)
        return 2

