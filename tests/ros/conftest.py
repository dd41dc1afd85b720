"""ROS 2 test plumbing: private DDS domain, built interfaces, node processes, a test-side node.

Every ROS test runs real rclpy over real DDS on this machine only: discovery is limited to
localhost and the domain id is private to this pytest session (parallel runs on the same
machine do not see each other). The node under test runs in its own process with a tiny
random model, exactly as `instructsam-segment-node` would, and dies with the test session.
"""
from __future__ import annotations

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

import pytest

REPO = Path(__file__).resolve().parents[2]

# Must be set before rclpy is initialised anywhere in this process.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(10 + os.getpid() % 80)
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "instructsam_ros" / "config" / "fastdds_large_data.xml")


def _build_interfaces() -> None:
    """Build msg/srv once (a quick no-op when up to date) so `instructsam_ros.msg` imports."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "build_ros.sh")], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build_ros.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


_build_interfaces()

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

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
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
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


@pytest.fixture(scope="session")
def harness():
    h = Harness()
    yield h
    h.close()


@pytest.fixture(scope="session")
def start_node(tmp_path_factory):
    """Factory: start a segment_node process; every started process is stopped at the end."""
    started: list[NodeProcess] = []
    logs = tmp_path_factory.mktemp("node_logs")

    def start(namespace: str, params: dict[str, Any], env: dict[str, str] | None = None) -> NodeProcess:
        process = NodeProcess(logs / f"{namespace.strip('/').replace('/', '_')}_{len(started)}.log", namespace, params, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
