"""One node serving N cameras (one model, frames of all cameras batched) against N nodes of one
camera each (N models): results per second in all and per camera, end-to-end latency, drops,
and the memory of the node processes (RSS, and PSS, which counts a shared library page once)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from instructsam_core.errors import UserError
from instructsam_ros.benchmark.session import INSTRUCTION, NAMESPACE, frame_message, hardware
from instructsam_ros.processes import child_env, start_child, stop_child
from instructsam_ros.spinning import BackgroundSpinner


def process_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in bytes (PSS 0 where /proc/PID/smaps_rollup is missing)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


class CameraSetup:
    """N cameras (cam0..camN-1 under NAMESPACE) served by one node or by N nodes, and this
    process's publishers and result subscribers for them. Both setups have the same topics."""

    def __init__(self, node, cameras: int, one_node: bool, model: str, device: str, threshold: float, log_dir: Path) -> None:
        from sensor_msgs.msg import Image

        from instructsam_ros.interfaces import InstanceSegmentation
        from instructsam_ros.dds.qos import stream_qos

        self.names = [f"cam{i}" for i in range(cameras)]
        self.one_node = one_node
        env = child_env()
        common = ["-p", f"model:={model}", "-p", f"device:={device}", "-p", f"threshold:={threshold}",
                  "-p", "max_frame_age:=0.0", "-p", "diagnostics_period:=5.0", "-p", f"instruction:={INSTRUCTION}"]
        self.logs = []
        self.procs = []
        if one_node:
            commands = [(NAMESPACE, ["-p", f"cameras:=[{', '.join(self.names)}]", "-p", f"max_batch:={max(1, cameras)}"])]
        else:
            commands = [(f"{NAMESPACE}/{name}", []) for name in self.names]
        for k, (namespace, extra) in enumerate(commands):
            log = open(log_dir / f"node_{cameras}_{'one' if one_node else 'sep'}_{k}.log", "w")
            self.logs.append(log)
            self.procs.append(start_child(
                [sys.executable, "-m", "instructsam_ros.segment_node", "--ros-args", "-r", f"__ns:={namespace}", *common, *extra],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            ))
        self.node = node
        self.lock = threading.Lock()
        self.received: dict[str, dict[int, int]] = {name: {} for name in self.names}  # stamp -> receive ns
        self.publishers = [node.create_publisher(Image, f"{NAMESPACE}/{name}/image", stream_qos("best_effort", 1)) for name in self.names]
        self.subs = [node.create_subscription(InstanceSegmentation, f"{NAMESPACE}/{name}/segmentation",
                                              lambda msg, name=name: self._on_result(name, msg), stream_qos("reliable", 50))
                     for name in self.names]

    def _on_result(self, name: str, msg) -> None:
        now = time.time_ns()
        with self.lock:
            self.received[name][msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = now

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(p.get_subscription_count() == 0 for p in self.publishers) or any(s.get_publisher_count() == 0 for s in self.subs):
            if any(proc.poll() is not None for proc in self.procs):
                raise UserError(f"a node exited during start-up; see {self.logs[0].name}")
            if time.monotonic() > deadline:
                raise UserError(f"the nodes were not ready within {timeout:g} s; see {self.logs[0].name}")
            time.sleep(0.1)

    def stream(self, frame_msg, rate: float, seconds: float, settle: float = 1.0) -> dict:
        """Every camera publishes at `rate` for `settle` + `seconds` (only `seconds` counted)."""
        from builtin_interfaces.msg import Time

        sent: list[int] = []
        start = time.monotonic()
        total, warm = int(round((settle + seconds) * rate)), int(round(settle * rate))
        for k in range(total):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ns = time.time_ns()
            frame_msg.header.stamp = Time(sec=ns // 10**9, nanosec=ns % 10**9)
            for publisher in self.publishers:
                publisher.publish(frame_msg)
            if k >= warm:
                sent.append(ns)
        time.sleep(3.0)  # results still in flight
        per_camera = {}
        with self.lock:
            for name in self.names:
                got = [(self.received[name][s] - s) / 1e9 for s in sent if s in self.received[name]]
                per_camera[name] = {
                    "answered": len(got), "sent": len(sent), "results_per_s": len(got) / seconds,
                    "e2e_median_ms": float(np.median(got) * 1e3) if got else None,
                    "e2e_p99_ms": float(np.percentile(got, 99) * 1e3) if got else None,
                }
        return per_camera

    def memory(self) -> tuple[int, int]:
        usage = [process_memory(proc.pid) for proc in self.procs]
        return sum(r for r, _ in usage), sum(p for _, p in usage)

    def close(self) -> None:
        for proc in self.procs:
            stop_child(proc, "benchmark: segment node")
        for log in self.logs:
            log.close()
        for sub in self.subs:
            self.node.destroy_subscription(sub)
        for publisher in self.publishers:
            self.node.destroy_publisher(publisher)


def run_cameras(args: argparse.Namespace, model: str, model_name: str, scratch: Path) -> dict:
    import rclpy

    width, height = args.sizes[0]
    msg = frame_message(width, height)
    rclpy.init()
    node = rclpy.create_node("instructsam_benchmark")
    spinner = BackgroundSpinner(node)
    report = {"model": model_name, "device": args.device, "hardware": hardware(), "instruction": INSTRUCTION,
              "size": f"{width}x{height}", "rate": args.rate, "seconds": args.seconds,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"), "runs": []}
    try:
        for count in args.cameras:
            for one_node in (True, False):
                setup = CameraSetup(node, count, one_node, model, args.device, args.threshold, scratch)
                try:
                    setup.wait_ready(args.startup_timeout)
                    setup.stream(msg, 2.0, 2.0)  # warm-up of every camera's path (not counted)
                    per_camera = setup.stream(msg, args.rate, args.seconds)
                    rss, pss = setup.memory()
                finally:
                    setup.close()
                run = {"cameras": count, "setup": "one node" if one_node else (f"{count} separate nodes" if count > 1 else "1 separate node"), "per_camera": per_camera,
                       "results_per_s": sum(c["results_per_s"] for c in per_camera.values()), "rss": rss, "pss": pss}
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
    finally:
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return report


def cameras_markdown(report: dict) -> str:
    lines = [
        f"Model: {report['model']}; device: {report['device']}; hardware: {report['hardware']}; "
        f"OMP_NUM_THREADS {report['omp_num_threads']}; {report['size']} rgb8 frames, every camera at {report['rate']:g} Hz "
        f"for {report['seconds']:g} s; instruction {report['instruction']!r}.",
        "",
        "| cameras | setup | results/s (all cameras) | results/s per camera (min-max) | answered | e2e median (ms), per camera | e2e p99 (ms), worst camera | RSS (MiB) | PSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        cams = list(run["per_camera"].values())
        rates = [c["results_per_s"] for c in cams]
        medians = ", ".join("-" if c["e2e_median_ms"] is None else f"{c['e2e_median_ms']:.0f}" for c in cams)
        p99 = [c["e2e_p99_ms"] for c in cams if c["e2e_p99_ms"] is not None]
        worst = f"{max(p99):.0f}" if p99 else "-"
        answered, sent = sum(c["answered"] for c in cams), sum(c["sent"] for c in cams)
        lines.append(
            f"| {run['cameras']} | {run['setup']} | {run['results_per_s']:.1f} | {min(rates):.1f}-{max(rates):.1f} | "
            f"{answered} / {sent} | {medians} | {worst} | {run['rss'] / 2**20:.0f} | {run['pss'] / 2**20:.0f} |"
        )
    return "\n".join(lines)
