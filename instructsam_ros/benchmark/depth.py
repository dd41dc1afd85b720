"""The 3-D step's cost in segment_node, over real DDS (`python -m instructsam_ros.benchmark --depth`).

One node process with depth:=true, fed a synthetic RGB-D scene of ten squares at known depths
(`demo.depth_scenes.benchmark_scene`; with the embedded default model at threshold 0 every frame
has ten instances). In the same run, phases alternate at a fixed rate well below the model's
capacity (no queueing):
  colour        colour frames only: the node pairs, finds no depth, reports 3-D missing
  depth         colour + aligned 16UC1 depth + CameraInfo, same stamps: the full 3-D step
  depth+cloud   the same with a subscriber on instance_points (the point cloud is built)
Per phase it reports the node's own timings from every result: the 3-D step
(`InstanceSegmentation.depth_latency`: pairing, depth decoding, statistics, cloud packing),
the in-node overhead (`processing_latency - model_latency`) and the model time, plus
end-to-end latency, instances per frame and mask pixels per frame.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from instructsam_ros.benchmark.session import Session

NAMESPACE = "/instructsam_bench_depth"
INSTRUCTION = "squares"
PHASES = ("colour", "depth", "depth+cloud")
FOV_DEG = 60.0


class DepthSession(Session):
    """The node (depth:=true) and this process's publishers and subscribers: a Session with an
    aligned depth stream and its CameraInfo beside the colour one."""

    node_name = "instructsam_depth_benchmark"

    def __init__(self, model: str, device: str, threshold: float, log_path: Path) -> None:
        from sensor_msgs.msg import CameraInfo, Image

        from instructsam_ros.dds.qos import stream_qos

        super().__init__(model, device, threshold, log_path, namespace=NAMESPACE, instruction=INSTRUCTION,
                         node_params=("depth:=true", "depth_sync_tolerance:=0.005"))
        self.depth_pub = self.node.create_publisher(Image, "depth/image", stream_qos("reliable", 1))
        self.info_pub = self.node.create_publisher(CameraInfo, "depth/camera_info", stream_qos("reliable", 1))
        self._cloud_sub = None

    def _on_result(self, msg) -> None:
        now = time.time_ns()
        key = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        entry = {
            "receive_ns": now, "model": float(msg.model_latency), "in_node": float(msg.processing_latency),
            "depth": float(msg.depth_latency), "status": int(msg.depth_status), "instances": len(msg.instances),
            "mask_pixels": sum(int(i.area) for i in msg.instances),
            "located": sum(1 for i in msg.instances if i.location.status == i.location.OK),
        }
        with self.lock:
            self.received[key] = entry

    def cloud(self, on: bool) -> None:
        """Subscribe to instance_points (the node then builds the cloud) or unsubscribe."""
        from sensor_msgs.msg import PointCloud2

        from instructsam_ros.dds.qos import stream_qos

        if on and self._cloud_sub is None:
            self._cloud_sub = self.node.create_subscription(PointCloud2, "instance_points", lambda msg: None,
                                                            stream_qos("reliable", 5))
            deadline = time.monotonic() + 20
            while self._cloud_sub.get_publisher_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # the node's publisher sees the match too
        elif not on and self._cloud_sub is not None:
            self.node.destroy_subscription(self._cloud_sub)
            self._cloud_sub = None
            time.sleep(0.5)

    def _matched(self) -> bool:
        return super()._matched() and self.depth_pub.get_subscription_count() > 0

    def stream(self, colour, depth, info, rate: float, seconds: float, settle: float = 1.0) -> list[dict]:
        """Publish at `rate` (depth and CameraInfo first, when given) and return the results of
        the frames after `settle` seconds."""
        from builtin_interfaces.msg import Time

        sent: list[int] = []
        start = time.monotonic()
        total = int(round((settle + seconds) * rate))
        for k in range(total):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ns = time.time_ns()
            stamp = Time(sec=ns // 10**9, nanosec=ns % 10**9)
            if depth is not None:
                info.header.stamp = depth.header.stamp = stamp
                self.info_pub.publish(info)
                self.depth_pub.publish(depth)
                time.sleep(0.002)
            colour.header.stamp = stamp
            self.publisher.publish(colour)
            if k >= int(round(settle * rate)):
                sent.append(ns)
        time.sleep(min(5.0, 2.0 + 2.0 / rate))
        with self.lock:
            return [{"sent_ns": s, **self.received[s]} for s in sent if s in self.received]


def scene_messages(width: int, height: int):
    """(colour Image, 16UC1 depth Image, CameraInfo, mask pixels of the ten squares)."""
    from sensor_msgs.msg import CameraInfo

    from instructsam_ros.messages.images import array_to_image_msg
    from instructsam_ros.demo.depth_scenes import benchmark_scene, pinhole, render, to_16uc1

    k = pinhole(width, height, FOV_DEG)
    frame = render(benchmark_scene(), k, wall_depth=2.0)
    colour = array_to_image_msg(frame.rgb, "rgb8")
    colour.header.frame_id = "bench_optical"
    depth = array_to_image_msg(to_16uc1(frame.depth), "mono16")
    depth.encoding = "16UC1"
    depth.header.frame_id = "bench_optical"
    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5)
    info.k = [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]
    info.header.frame_id = "bench_optical"
    return colour, depth, info, [int(m.sum()) for m in frame.masks]


def summarise(phase: str, results: list[dict], sent: int) -> dict:
    if not results:
        return {"phase": phase, "answered": 0, "sent": sent}
    column = lambda name: np.array([r[name] for r in results], dtype=np.float64)  # noqa: E731
    e2e = (column("receive_ns") - column("sent_ns")) / 1e9
    in_node = column("in_node") - column("model")
    return {
        "phase": phase, "answered": len(results), "sent": sent,
        "depth_ok": int(sum(r["status"] == 1 for r in results)),
        "instances_median": float(np.median(column("instances"))),
        "located_median": float(np.median(column("located"))),
        "mask_pixels_median": float(np.median(column("mask_pixels"))),
        "depth_step_median_ms": float(np.median(column("depth")) * 1e3),
        "depth_step_p95_ms": float(np.percentile(column("depth"), 95) * 1e3),
        "in_node_overhead_median_ms": float(np.median(in_node) * 1e3),
        "model_median_ms": float(np.median(column("model")) * 1e3),
        "e2e_median_ms": float(np.median(e2e) * 1e3),
    }


def run_depth(args, model: str, model_name: str, scratch: Path, hardware: str) -> dict:
    """Every size: `args.repeats` rounds of the three phases, `args.seconds` each at `args.depth_rate`."""
    session = DepthSession(model, args.device, args.threshold, scratch / "node_depth.log")
    report = {"model": model_name, "device": args.device, "hardware": hardware, "instruction": INSTRUCTION,
              "threshold": args.threshold, "rate": args.depth_rate, "sizes": []}
    try:
        session.wait_ready(args.startup_timeout)
        for width, height in args.sizes:
            colour, depth, info, truth_pixels = scene_messages(width, height)
            session.stream(colour, depth, info, 2.0, 2.0)  # warm this size up
            collected = {phase: [] for phase in PHASES}
            sent = dict.fromkeys(PHASES, 0)
            for _ in range(args.repeats):
                for phase in PHASES:
                    session.cloud(phase == "depth+cloud")
                    with_depth = phase != "colour"
                    results = session.stream(colour, depth if with_depth else None, info, args.depth_rate, args.seconds)
                    collected[phase] += results
                    sent[phase] += int(round(args.seconds * args.depth_rate))
            session.cloud(False)
            entry = {"size": f"{width}x{height}", "square_pixels": truth_pixels,
                     "phases": [summarise(phase, collected[phase], sent[phase]) for phase in PHASES]}
            report["sizes"].append(entry)
            print(markdown({**report, "sizes": [entry]}), flush=True)
    finally:
        session.close()
    return report


def markdown(report: dict) -> str:
    lines = [
        f"Model: {report['model']}; device: {report['device']}; hardware: {report['hardware']}; instruction "
        f"{report['instruction']!r}, threshold {report['threshold']}; {report['rate']:g} Hz; ten squares at 0.80-1.25 m.",
        "",
        "| input | phase | answered / sent | 3-D ok | instances | located | mask px / frame | 3-D step median (ms) "
        "| 3-D step p95 (ms) | in-node overhead median (ms) | model median (ms) | e2e median (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["sizes"]:
        for p in entry["phases"]:
            if not p["answered"]:
                lines.append(f"| {entry['size']} | {p['phase']} | 0 / {p['sent']} | - | - | - | - | - | - | - | - | - |")
                continue
            lines.append(
                f"| {entry['size']} | {p['phase']} | {p['answered']} / {p['sent']} | {p['depth_ok']} | "
                f"{p['instances_median']:.0f} | {p['located_median']:.0f} | {p['mask_pixels_median']:.0f} | "
                f"{p['depth_step_median_ms']:.2f} | {p['depth_step_p95_ms']:.2f} | {p['in_node_overhead_median_ms']:.2f} | "
                f"{p['model_median_ms']:.1f} | {p['e2e_median_ms']:.1f} |")
    return "\n".join(lines)
