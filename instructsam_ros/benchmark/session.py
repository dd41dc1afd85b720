"""One segment node in its own process (as deployed) and this process's publisher and result
subscriber over real DDS, the way ros2_benchmark measures perception nodes; the frames and the
rate search every measurement shares."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from instructsam_core.errors import UserError
from instructsam_ros.processes import child_env, start_child, stop_child
from instructsam_ros.spinning import BackgroundSpinner

NAMESPACE = "/instructsam_bench"
INSTRUCTION = "red circles"  # a bare phrase: the streaming (single-forward) path from frame one


def hardware() -> str:
    """One line: CPU model and cores, GPU if any, torch build."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    return "; ".join(parts)


class Session:
    """The node process plus this process's publisher and result subscriber; `node_params`
    (`name:=value`) go to the node after the benchmark's own."""

    node_name = "instructsam_benchmark"

    def __init__(self, model: str, device: str, threshold: float, log_path: Path, namespace: str = NAMESPACE,
                 instruction: str = INSTRUCTION, node_params: tuple[str, ...] = ()) -> None:
        import rclpy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from instructsam_ros.interfaces import InstanceSegmentation
        from instructsam_ros.dds.qos import instruction_qos, stream_qos

        env = child_env()
        params = [f"model:={model}", f"device:={device}", f"threshold:={threshold}", "max_frame_age:=0.0",
                  "diagnostics_period:=5.0", *node_params]
        self._log = open(log_path, "w")
        self.proc = start_child(
            [sys.executable, "-m", "instructsam_ros.segment_node", "--ros-args", "-r", f"__ns:={namespace}",
             *(arg for param in params for arg in ("-p", param))],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        rclpy.init()
        self.node = rclpy.create_node(self.node_name, namespace=namespace)
        self.publisher = self.node.create_publisher(Image, "image", stream_qos("best_effort", 1))
        self.instruction = self.node.create_publisher(String, "instruction", instruction_qos())
        self.instruction.publish(String(data=instruction))
        self.lock = threading.Lock()
        self.received: dict[int, Any] = {}  # stamp -> what _on_result keeps of the result
        self.sub = self.node.create_subscription(InstanceSegmentation, "segmentation", self._on_result, stream_qos("reliable", 50))
        self.spinner = BackgroundSpinner(self.node)

    def _on_result(self, msg) -> None:
        now = time.time_ns()
        key = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.lock:
            self.received[key] = (now, float(msg.model_latency), float(msg.processing_latency))

    def _matched(self) -> bool:
        """The node subscribes to what this process publishes, and publishes its results."""
        return self.publisher.get_subscription_count() > 0 and self.sub.get_publisher_count() > 0

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._matched():
            if self.proc.poll() is not None:
                raise UserError(f"the node exited during start-up; see {self._log.name}")
            if time.monotonic() > deadline:
                raise UserError(f"the node was not ready within {timeout:g} s; see {self._log.name}")
            time.sleep(0.1)

    def stream(self, frame_msg, rate: float, seconds: float, settle: float = 1.0) -> dict[str, float]:
        """Publish at `rate` for `seconds` (after `settle` s not counted) and summarise."""
        from builtin_interfaces.msg import Time

        sent: list[int] = []
        start = time.monotonic()
        total = int(round((settle + seconds) * rate))
        warm = int(round(settle * rate))
        for k in range(total):
            target = start + k / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ns = time.time_ns()
            frame_msg.header.stamp = Time(sec=ns // 10**9, nanosec=ns % 10**9)
            self.publisher.publish(frame_msg)
            if k >= warm:
                sent.append(ns)
        time.sleep(min(5.0, 2.0 + 2.0 / rate))  # results still in flight
        with self.lock:
            got = [(s, *self.received[s]) for s in sent if s in self.received]
        if not got:
            return {"rate": rate, "sent": len(sent), "answered": 0, "drop_fraction": 1.0}
        e2e = np.array([(r - s) / 1e9 for s, r, _, _ in got])
        model = np.array([m for _, _, m, _ in got])
        in_node = np.array([p for _, _, _, p in got])
        return {
            "rate": rate,
            "sent": len(sent),
            "answered": len(got),
            "drop_fraction": 1.0 - len(got) / len(sent),
            "e2e_median_ms": float(np.median(e2e) * 1e3),
            "e2e_p99_ms": float(np.percentile(e2e, 99) * 1e3),
            "model_median_ms": float(np.median(model) * 1e3),
            "overhead_median_ms": float(np.median(e2e - model) * 1e3),
            "in_node_overhead_median_ms": float(np.median(in_node - model) * 1e3),
        }

    def close(self) -> None:
        import rclpy

        self.spinner.stop()
        stop_child(self.proc, "benchmark: segment node")
        self._log.close()
        self.node.destroy_node()
        rclpy.try_shutdown()


def frame_message(width: int, height: int):
    from instructsam_ros.demo.scenes import synthetic_scene
    from instructsam_ros.messages.images import array_to_image_msg

    pixels, _, _ = synthetic_scene(3, height, width)
    msg = array_to_image_msg(pixels, "rgb8")
    msg.header.frame_id = "bench_camera"
    return msg


def peak_rate(session: Session, msg, low: float, high: float, seconds: float, steps: int) -> tuple[float, list[dict]]:
    """Highest rate in [low, high] with < 5 % drops, by bisection (`low` assumed to pass)."""
    runs = []
    best = 0.0
    for _ in range(steps):
        rate = (low + high) / 2 if best else low
        result = session.stream(msg, rate, seconds)
        runs.append(result)
        if result["drop_fraction"] < 0.05:
            best = max(best, rate)
            low = rate
        else:
            high = rate
        if best and high - low < 0.05 * high:
            break
    return best, runs
