"""Frames/s of `instructsam annotate-bag` against `instructsam predict` on the same frames.

Writes a bag of synthetic shape scenes (rosbags), then in one process, alternating, each
`--repeats` times (medians reported, the machine may be shared):
  1. `Predictor.predict` on every frame, one call per frame (what `instructsam predict` runs
     for one image, without its process start and model load);
  2. `Predictor.predict_batch` in annotate-bag's batch size: the model alone;
  3. `annotate_bag` on the bag with the same predictor (loaded and warmed up once);
  4. `annotate_bag` with the model's results of 2. replayed instead of computed: the I/O alone.
Then optionally `instructsam predict` as a command on a few frames (one process per image),
and the sizes: the input, the output (its storage file and all), and per output topic its
messages' bytes raw and each zstd-compressed alone (what chunk compression makes of them).
`--noise` adds camera-like sensor noise to the synthetic frames, whose flat colours compress
far better than a camera's. Runs against an older tree too (PYTHONPATH=<tree>): the options
it does not know are left out.
The I/O share is annotate-bag's time outside the model (bag reading, decoding, RLE encoding,
the resumable record, writing the output bag and JSON) over its total; it is also given as
annotate-bag's total against the model alone on the same batches (2.), which counts any
slowdown the I/O causes the model.

  OMP_NUM_THREADS=1 python scripts/bench_annotate_bag.py --model default --frames 200 --size 640x480
      [--compressed] [--noise 3] [--compression zstd|lz4|none] [--storage sqlite3 --compression-mode file]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def hardware() -> str:
    """The node benchmark's hardware line plus torch's thread count (the I/O threads' rule)."""
    import torch

    from instructsam_ros.benchmark.session import hardware as machine

    return f"{machine()}, {torch.get_num_threads()} threads"


def make_frames(count: int, height: int, width: int, seed: int, noise: float) -> list[np.ndarray]:
    from instructsam_core import synth

    rng = np.random.default_rng(seed)
    frames = [cv2.resize(synth.make_scene(rng).image, (width, height), interpolation=cv2.INTER_NEAREST)
              for _ in range(count)]
    if noise > 0:
        frames = [np.clip(f + rng.normal(0.0, noise, f.shape), 0, 255).astype(np.uint8) for f in frames]
    return frames


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def topic_bytes(bag: Path) -> dict[str, tuple[int, int]]:
    """Per topic: (raw message bytes, bytes when each message is zstd-compressed alone)."""
    import zstandard
    from rosbags.highlevel import AnyReader

    from instructsam_ros.bags.types import build_typestore

    compressor = zstandard.ZstdCompressor(level=3)
    sizes: dict[str, list[int]] = {}
    with AnyReader([bag], default_typestore=build_typestore()) as reader:
        for connection, _, raw in reader.messages():
            entry = sizes.setdefault(connection.topic, [0, 0])
            entry[0] += len(raw)
            entry[1] += len(compressor.compress(bytes(raw)))
    return {topic: (raw, packed) for topic, (raw, packed) in sizes.items()}


def write_bag(path: Path, storage: str, frames: list[np.ndarray], compressed: bool) -> str:
    """One camera topic at 10 Hz (raw rgb8 or JPEG) plus a 100 Hz std_msgs/String topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    topic = "/camera/image/compressed" if compressed else "/camera/image_raw"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        camera = writer.add_connection(topic, msgtype, typestore=store)
        chatter = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        for i, rgb in enumerate(frames):
            stamp = 1_700_000_000 * 10**9 + i * 100_000_000
            header = types["std_msgs/msg/Header"](
                stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="camera")
            if compressed:
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
                msg = types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=jpeg.reshape(-1))
            else:
                height, width = rgb.shape[:2]
                msg = types["sensor_msgs/msg/Image"](header=header, height=height, width=width, encoding="rgb8",
                                                     is_bigendian=0, step=width * 3, data=rgb.reshape(-1))
            writer.write(camera, stamp, store.serialize_cdr(msg, msgtype))
            for k in range(10):
                text = types["std_msgs/msg/String"](data=f"tick {i}.{k}")
                writer.write(chatter, stamp + k * 10_000_000 + 1, store.serialize_cdr(text, "std_msgs/msg/String"))
    return topic


class Replay:
    """Stands in for the Predictor: hands back results computed before, in order."""

    def __init__(self, results: list) -> None:
        self.results = iter(results)

    def predict_batch(self, images, instructions, phrases=None) -> list:
        return [next(self.results) for _ in images]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    parser.add_argument("--storage", choices=["sqlite3", "mcap"], default="mcap")
    parser.add_argument("--compressed", action="store_true", help="JPEG CompressedImage instead of raw rgb8")
    parser.add_argument("--instruction", default="red circles")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--overlay", action="store_true")
    parser.add_argument("--io-threads", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="each measurement, alternating; medians reported")
    parser.add_argument("--cli-frames", type=int, default=2, help="frames for the `instructsam predict` command")
    parser.add_argument("--io-only", action="store_true",
                        help="time only annotate-bag with the results replayed (the I/O alone): for comparing trees")
    parser.add_argument("--noise", type=float, default=0.0, help="sensor noise (sigma, 8-bit levels) on the frames")
    parser.add_argument("--compression", default=None, help="annotate-bag's --compression (trees that have it)")
    parser.add_argument("--compression-mode", default=None, help="annotate-bag's --compression-mode")
    args = parser.parse_args()

    from instructsam_core.predictor import Predictor
    from instructsam_ros.bags.annotate import annotate_bag
    from instructsam_ros.bags.options import AnnotateOptions

    width, height = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench_annotate_bag_"))
    try:
        frames = make_frames(args.frames, height, width, seed=0, noise=args.noise)
        bag = work / "in"
        topic = write_bag(bag, args.storage, frames, args.compressed)
        if args.compressed:  # predict sees what annotate-bag decodes
            frames = [cv2.cvtColor(cv2.imdecode(cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR),
                                                             [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR),
                                   cv2.COLOR_BGR2RGB) for f in frames]
        start = time.perf_counter()
        predictor = Predictor.from_pretrained(args.model, device=args.device)
        load = time.perf_counter() - start
        predictor.predict_batch(frames[: args.batch_size], [args.instruction] * min(args.batch_size, len(frames)))
        predictor.predict(frames[0], args.instruction)
        threads = {"auto": None, "on": True, "off": False}[args.io_threads]

        times: dict[str, list[float]] = {"predict": [], "batch": [], "annotate": [], "inside": [], "replay": []}
        summary = None
        results = []
        for repeat in range(args.repeats):
            if not (args.io_only and results):
                start = time.perf_counter()
                for rgb in frames:
                    predictor.predict(rgb, args.instruction)
                times["predict"].append(time.perf_counter() - start)
                start = time.perf_counter()
                results = []
                for i in range(0, len(frames), args.batch_size):
                    chunk = frames[i:i + args.batch_size]
                    results.extend(predictor.predict_batch(chunk, [args.instruction] * len(chunk)))
                times["batch"].append(time.perf_counter() - start)
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            extra = {name: value for name, value in (("compression", args.compression),
                                                     ("compression_mode", args.compression_mode)) if value}
            options = AnnotateOptions(bag=bag, out=out, topics=[topic], instruction=args.instruction,
                                      model=args.model, device=args.device, batch_size=args.batch_size,
                                      overlay=args.overlay, progress=False, threads=threads, **extra)
            if not args.io_only or repeat == 0:
                summary = annotate_bag(options, lambda: predictor, log=lambda _: None)
                times["annotate"].append(summary.seconds["total"] - summary.seconds["load"])
                times["inside"].append(summary.seconds["model"])
                sizes = (directory_bytes(bag), directory_bytes(out), topic_bytes(out))
                shutil.rmtree(out)
            replayed = annotate_bag(options, lambda: Replay(results), log=lambda _: None)
            times["replay"].append(replayed.seconds["total"])

        cli_seconds = None
        if args.cli_frames > 0:
            start = time.perf_counter()
            for k in range(args.cli_frames):
                image = work / f"frame{k}.png"
                cv2.imwrite(str(image), cv2.cvtColor(frames[k], cv2.COLOR_RGB2BGR))
                subprocess.run([sys.executable, "-m", "instructsam_core.cli", "predict", "--model", args.model,
                                "--device", args.device, "--image", str(image), "--instruction", args.instruction,
                                "--out", str(work / f"predict{k}")], check=True, capture_output=True)
            cli_seconds = (time.perf_counter() - start) / args.cli_frames

        n = len(frames)
        median = {key: statistics.median(values) for key, values in times.items()}
        kind = "JPEG CompressedImage" if args.compressed else "raw rgb8 Image"
        print(f"hardware: {hardware()}; load average {os.getloadavg()[0]:.1f} at the end")
        print(f"bag: {n} frames {width}x{height} {kind} + {10 * n} std_msgs/String, {args.storage}; model {args.model} "
              f"(loaded in {load:.1f} s); instruction {args.instruction!r}; batch size {args.batch_size}; "
              f"overlay {'on' if args.overlay else 'off'}; io threads {args.io_threads} "
              f"({'on' if options.use_threads else 'off'}); medians of {args.repeats}")
        print(f"instances written per run: {sum(summary.phrases.values())}; noise {args.noise}; output compression "
              f"{args.compression or 'default'}{' ' + args.compression_mode if args.compression_mode else ''}")
        print("| what | frames/s | ms/frame |")
        print("|---|---|---|")
        rows = [("Predictor.predict, one call per frame (`instructsam predict`'s call)", median["predict"]),
                (f"Predictor.predict_batch, batches of {args.batch_size} (the model alone)", median["batch"]),
                ("annotate-bag, end to end without model loading", median["annotate"]),
                ("  of which inside predict_batch", median["inside"]),
                ("annotate-bag with the model's results replayed (the I/O alone)", median["replay"])]
        for label, seconds in rows:
            print(f"| {label} | {n / seconds:.2f} | {1e3 * seconds / n:.2f} |")
        if cli_seconds is not None:
            print(f"| `instructsam predict` command, one process per frame | {1 / cli_seconds:.3f} | {1e3 * cli_seconds:.0f} |")
        outside = median["annotate"] - median["inside"]
        print(f"I/O and conversion, annotate-bag's time outside the model: {1e3 * outside / n:.2f} ms/frame = "
              f"{100 * outside / median['annotate']:.1f} % of its total")
        extra = median["annotate"] - median["batch"]
        print(f"annotate-bag against the model alone on the same batches: +{1e3 * extra / n:.2f} ms/frame = "
              f"{100 * extra / median['annotate']:.1f} % of its total")
        bag_size, out_size, per_topic = sizes
        print(f"sizes: input bag {bag_size / 1e6:.2f} MB; output directory {out_size / 1e6:.2f} MB "
              f"({out_size / bag_size:.1f}x the input)")
        print("| output topic | raw MB | each message zstd-compressed alone, MB |")
        print("|---|---:|---:|")
        for name, (raw, packed) in sorted(per_topic.items()):
            print(f"| {name} | {raw / 1e6:.2f} | {packed / 1e6:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
