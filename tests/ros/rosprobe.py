"""Test-side helpers to talk to a segment_node process: publish frames, collect its outputs."""
from __future__ import annotations

import array
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from instructsam_ros.messages.images import array_to_image_msg
from instructsam_ros.msg import InstanceSegmentation

REPO = Path(__file__).resolve().parents[2]

DISCOVERY_TIMEOUT = 20.0


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy; fail the test naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _die_with_parent() -> None:
    """Child side of Popen: get SIGTERM when the pytest process dies, so no node outlives it."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class NodeProcess:
    """segment_node in its own process, with parameters, namespace and a log file."""

    def __init__(self, log_path: Path, namespace: str, params: dict[str, Any], env: dict[str, str] | None = None):
        self.log_path = log_path
        self.namespace = namespace
        args = [sys.executable, "-m", "instructsam_ros.segment_node", "--ros-args", "-r", f"__ns:={namespace}"]
        for name, value in params.items():
            args += ["-p", f"{name}:={_ros_arg(value)}"]
        full_env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self._log.closed:
            return self.proc.returncode
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode


def _ros_arg(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"'{v}'" for v in value) + "]"
    return str(value)


class Harness:
    """A test-side rclpy node spun in a background thread."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("test_harness", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self) -> None:
        while self._running and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def call(self, client, request, timeout: float = 30.0):
        """Call a service (waiting for it to appear) and return the response."""
        wait_for(lambda: client.service_is_ready(), DISCOVERY_TIMEOUT, f"service {client.srv_name}")
        future = client.call_async(request)
        wait_for(future.done, timeout, f"response of {client.srv_name}")
        return future.result()

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=5)
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


BEST_EFFORT = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

_stamp_lock = threading.Lock()
_last_stamp = [0]


def unique_stamp() -> Time:
    """Wall-clock stamps, strictly increasing across the session (results are found by stamp)."""
    with _stamp_lock:
        ns = max(time.time_ns(), _last_stamp[0] + 1000)
        _last_stamp[0] = ns
    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


def stamp_ns(stamp: Time) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


class Probe:
    """Publishers and recorders for one node namespace, or one camera of a node (`camera`):
    its image, own instruction and output topics under <namespace>/<camera>/, and its own
    /diagnostics status."""

    def __init__(self, harness, namespace: str, node_name: str = "segment_node", camera: str = "") -> None:
        self.harness = harness
        node = harness.node
        self.ns = namespace.rstrip("/")
        self.node_fqn = f"{self.ns}/{node_name}"
        self.camera = camera
        prefix = f"{self.ns}/{camera}" if camera else self.ns
        self.status_name = f"{self.node_fqn}: camera {camera}" if camera else f"{self.node_fqn}: segmentation"
        self._lock = threading.Lock()
        self.results: list[InstanceSegmentation] = []
        self.labels: list[Image] = []
        self.overlays: list[Image] = []
        self.diagnostics: list[Any] = []
        self.subs = [
            node.create_subscription(InstanceSegmentation, f"{prefix}/segmentation", self._keep(self.results), RELIABLE),
            node.create_subscription(Image, f"{prefix}/label_image", self._keep(self.labels), RELIABLE),
            node.create_subscription(Image, f"{prefix}/overlay", self._keep(self.overlays), RELIABLE),
            node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, RELIABLE),
        ]
        self.image_pub = node.create_publisher(Image, f"{prefix}/image", BEST_EFFORT)
        self.instruction_pub = node.create_publisher(String, f"{prefix}/instruction", LATCHED)
        self.param_client = node.create_client(SetParameters, f"{self.node_fqn}/set_parameters")

    def _keep(self, bucket: list):
        def keep(msg) -> None:
            with self._lock:
                bucket.append(msg)

        return keep

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == self.status_name:
                with self._lock:
                    self.diagnostics.append(status)

    def close(self) -> None:
        node = self.harness.node
        for sub in self.subs:
            node.destroy_subscription(sub)
        node.destroy_publisher(self.image_pub)
        node.destroy_publisher(self.instruction_pub)
        node.destroy_client(self.param_client)

    # -------------------------------------------------------------- inputs
    def wait_connected(self, publisher=None, timeout: float = 60.0) -> None:
        publisher = publisher or self.image_pub
        wait_for(lambda: publisher.get_subscription_count() > 0, timeout, f"node subscribing to {publisher.topic_name}")
        wait_for(lambda: self.subs[0].get_publisher_count() > 0, timeout, "node publishing segmentation")

    def frame(self, pixels: np.ndarray, encoding: str = "rgb8", frame_id: str = "camera") -> Image:
        msg = array_to_image_msg(pixels, encoding)
        msg.header.stamp = unique_stamp()
        msg.header.frame_id = frame_id
        return msg

    def result_for(self, stamp: Time) -> InstanceSegmentation | None:
        with self._lock:
            for msg in self.results:
                if stamp_ns(msg.header.stamp) == stamp_ns(stamp):
                    return msg
        return None

    def image_for(self, bucket: list[Image], stamp: Time) -> Image | None:
        with self._lock:
            for msg in bucket:
                if stamp_ns(msg.header.stamp) == stamp_ns(stamp):
                    return msg
        return None

    def request(self, msg: Image, timeout: float = 60.0, publisher=None, resend_every: float = 2.0,
                restamp: bool = False, before_each: Callable[[Time], None] | None = None) -> InstanceSegmentation:
        """Publish `msg` (again every few seconds: best effort may lose it) until its result arrives.

        With `restamp`, each resend carries a fresh stamp (and the result of any stamp sent is
        taken): a node with a `max_frame_age` drops a resent frame whose first stamp has aged.
        `before_each(stamp)` publishes what must precede each send (depth, camera_info)."""
        publisher = publisher or self.image_pub
        deadline = time.monotonic() + timeout
        sent: list[Time] = []

        def answered() -> InstanceSegmentation | None:
            return next(filter(None, map(self.result_for, sent)), None)

        while True:
            if restamp and sent:
                msg.header.stamp = unique_stamp()
            sent.append(msg.header.stamp)
            if before_each is not None:
                before_each(msg.header.stamp)
            publisher.publish(msg)
            try:
                return wait_for(answered, min(resend_every, max(0.1, deadline - time.monotonic())), "")
            except AssertionError:
                if time.monotonic() > deadline:
                    stamps = ", ".join(str(stamp_ns(stamp)) for stamp in sent[-3:])
                    raise AssertionError(f"no segmentation for the frame ({len(sent)} sent, last stamps {stamps}) "
                                         f"within {timeout:.0f} s") from None

    def instruct(self, text: str) -> None:
        self.instruction_pub.publish(String(data=text))

    def wait_instruction(self, text: str, pixels: np.ndarray, timeout: float = 60.0) -> InstanceSegmentation:
        """Send frames until one comes back answered under `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.request(self.frame(pixels), timeout=max(1.0, deadline - time.monotonic()))
            if result.instruction == text:
                return result
        raise AssertionError(f"no result for instruction {text!r} within {timeout:.0f} s")

    # -------------------------------------------------------------- parameters, diagnostics
    def set_parameter(self, name: str, value: Any):
        param = ParameterMsg(name=name, value=_parameter_value(value))
        response = self.harness.call(self.param_client, SetParameters.Request(parameters=[param]))
        return response.results[0]

    def latest_diagnostics(self, after: int = 0) -> dict[str, str]:
        """Key/values of the newest status from the node (waiting for one newer than `after`)."""
        wait_for(lambda: len(self.diagnostics) > after, DISCOVERY_TIMEOUT, f"/diagnostics from {self.node_fqn}")
        with self._lock:
            status = self.diagnostics[-1]
        values = {kv.key: kv.value for kv in status.values}
        values["_level"] = status.level
        values["_message"] = status.message
        return values

    def diagnostics_count(self) -> int:
        with self._lock:
            return len(self.diagnostics)

    def counter(self, key: str) -> int:
        """The newest value of a diagnostics counter, from a status published after this call."""
        return int(self.latest_diagnostics(after=self.diagnostics_count())[key])


def _parameter_value(value: Any) -> ParameterValue:
    if isinstance(value, bool):
        return ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    if isinstance(value, int):
        return ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    if isinstance(value, float):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    if isinstance(value, str):
        return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    if isinstance(value, list):
        return ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=value)
    raise TypeError(value)


def camera_info(k) -> CameraInfo:
    """The CameraInfo of intrinsics `k` (depth_scenes.pinhole), frame depth_optical."""
    msg = CameraInfo(width=k.width, height=k.height, distortion_model="plumb_bob")
    msg.k = [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]
    msg.header.frame_id = "depth_optical"
    return msg


def depth_image(pixels: np.ndarray, encoding: str) -> Image:
    """A depth Image (16UC1 or 32FC1) of an array, little-endian."""
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, is_bigendian=0,
                step=pixels.shape[1] * pixels.dtype.itemsize)
    msg.data = array.array("B", np.ascontiguousarray(pixels).tobytes())
    return msg


def test_scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A frame with a few flat-coloured rectangles on a grey background."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 200, np.uint8)
    for _ in range(3):
        y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        pixels[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.integers(0, 256, 3)
    return pixels


test_scene.__test__ = False  # not a test, despite its name
