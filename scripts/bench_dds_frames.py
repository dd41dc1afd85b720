"""Large rgb8 frames between two processes under a Fast DDS profile: delivered, latency, /dev/shm.

Measures the transport alone (no node, no model): this process publishes zero-filled rgb8
frames best effort, depth 1 (as a camera driver does) at a fixed rate; a child process
subscribes with the same QoS and records, per frame, the time from the stamp (wall clock at
publish) to its callback, deserialisation into Python included. Both use the profile given.

  python scripts/bench_dds_frames.py --profile instructsam_ros/config/fastdds_large_frames.xml \
      --sizes 4000x3000,4096x2160 --rate 2 --seconds 10

The /dev/shm column is what the two processes' Fast DDS segments occupy while running.
"""
from __future__ import annotations

import argparse
import array
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
QOS_DEPTH = 1


def _qos():
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=QOS_DEPTH, reliability=ReliabilityPolicy.BEST_EFFORT)


def subscriber(seconds: float) -> int:
    """Child side: print one JSON list of [frame_id, latency_ms, stamp_ns] after `seconds`."""
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_dds_frames_subscriber")
    got: list[tuple[str, float, int]] = []

    def on_frame(msg: Image) -> None:
        sent = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        got.append((msg.header.frame_id, (time.time_ns() - sent) / 1e6, sent))

    node.create_subscription(Image, "bench_frames", on_frame, _qos())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps(got), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def _segments() -> dict[str, int]:
    """Fast DDS shared-memory files and the bytes they occupy."""
    out = {}
    for path in [*Path("/dev/shm").glob("fastdds_*"), *Path("/dev/shm").glob("fastrtps_*")]:  # Fast DDS 3 / 2
        try:
            out[path.name] = path.stat().st_blocks * 512
        except OSError:
            pass
    return out


def _sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            width, height = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"sizes look like 4000x3000,4096x2160; got {item!r}") from None
        if not (1 <= width <= 16384 and 1 <= height <= 16384):
            raise argparse.ArgumentTypeError(f"size {item} is outside 1x1 .. 16384x16384")
        sizes.append((width, height))
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, type=Path, help="Fast DDS XML profile for both processes")
    parser.add_argument("--sizes", type=_sizes, default=_sizes("4000x3000,4096x2160"))
    parser.add_argument("--rate", type=float, default=2.0, help="frames per second (0 < rate <= 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per size (0 < seconds <= 600)")
    parser.add_argument("--subscriber", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 100 or not 0 < args.seconds <= 600:
        parser.error("--rate must be in (0, 100] and --seconds in (0, 600]")
    if not args.profile.is_file():
        parser.error(f"--profile {args.profile} is not a file")
    from instructsam_ros.dds.profiles import profile_variables

    for name in profile_variables():  # the name this distribution's Fast DDS reads
        os.environ[name] = str(args.profile.resolve())
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", "43")
    if args.subscriber:
        return subscriber(args.seconds)

    import rclpy
    from sensor_msgs.msg import Image

    before = _segments()
    listen = 10.0 + (args.seconds + 1.5) * len(args.sizes)
    child = subprocess.Popen(
        [sys.executable, __file__, "--subscriber", "--profile", str(args.profile), "--seconds", str(min(listen, 600))],
        stdout=subprocess.PIPE, text=True,
    )
    rclpy.init()
    node = rclpy.create_node("bench_dds_frames_publisher")
    publisher = node.create_publisher(Image, "bench_frames", _qos())
    deadline = time.monotonic() + 30
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    shm = sum(v for k, v in _segments().items() if k not in before)
    sent: dict[str, int] = {}
    first: dict[str, int] = {}  # stamp of each size's first frame
    for width, height in args.sizes:
        label = f"{width}x{height}"
        msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
        msg.header.frame_id = label
        msg.data = array.array("B", bytes(width * height * 3))
        sent[label] = 0
        end = time.monotonic() + args.seconds
        next_at = time.monotonic()
        while time.monotonic() < end:
            now = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = now // 10**9, now % 10**9
            publisher.publish(msg)
            first.setdefault(label, now)
            sent[label] += 1
            next_at += 1.0 / args.rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        time.sleep(1.5)
    output, _ = child.communicate(timeout=listen + 60)
    node.destroy_node()
    rclpy.try_shutdown()
    received = json.loads(output.strip().splitlines()[-1])
    print(f"profile {args.profile.name}; rgb8, best effort, depth {QOS_DEPTH}; {args.rate:g} Hz for {args.seconds:g} s per size; "
          f"/dev/shm held by the two processes' segments: {shm / 2**20:.0f} MiB")
    print("| input | MiB per frame | delivered / sent | first frame of the size | latency median (ms) | latency p95 (ms) |")
    print("|---|---|---|---|---|---|")
    stamps = {stamp for _, _, stamp in received}
    for label, count in sent.items():
        width, height = (int(v) for v in label.split("x"))
        latencies = sorted(ms for frame_id, ms, _ in received if frame_id == label)
        median = f"{statistics.median(latencies):.1f}" if latencies else "-"
        p95 = f"{latencies[int(0.95 * (len(latencies) - 1))]:.1f}" if latencies else "-"
        arrived = "arrived" if first.get(label) in stamps else "lost"
        print(f"| {label} | {width * height * 3 / 2**20:.1f} | {len(latencies)} / {count} | {arrived} | {median} | {p95} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
