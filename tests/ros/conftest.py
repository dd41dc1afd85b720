"""ROS 2 test plumbing: private DDS domain, built interfaces, node processes, a test-side node.

Every ROS test runs real rclpy over real DDS on this machine only: discovery is limited to
localhost and the domain id is private to this pytest session (parallel runs on the same
machine do not see each other). The node under test runs in its own process with a tiny
random model, exactly as `instructsam-segment-node` would, and dies with the test session.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# Must be set before rclpy is initialised anywhere in this process.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(10 + os.getpid() % 80)


def _build_interfaces() -> None:
    """Build msg/srv once (a quick no-op when up to date) so `instructsam_ros.msg` imports."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "build_ros.sh")], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build_ros.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


_build_interfaces()

# The packaged large-data profile for this process and every node it starts, under the name
# this distribution's Fast DDS reads (imported after the build: the package attaches the built
# interfaces when first imported).
from instructsam_ros.dds.profiles import DEFAULT_PROFILE, profile_variables  # noqa: E402

for _name in profile_variables():
    os.environ[_name] = str(DEFAULT_PROFILE)

from rosprobe import Harness, NodeProcess  # noqa: E402


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
