#!/usr/bin/env bash
# Runs the ROS 2 node tests (tests/ros) against the Jazzy wheels in .venv-jazzy
# (built by scripts/setup_jazzy.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv-jazzy/bin/activate
# The Jazzy-built interfaces: instructsam_ros/__init__.py attaches this install space (the
# tests' node and demo processes inherit it), and the tests' rebuild check uses both folders.
export INSTRUCTSAM_ROS_BUILD=build/ros-jazzy
export INSTRUCTSAM_ROS_INSTALL=install/ros-jazzy
# DDS traffic never leaves this machine; a private domain keeps parallel runs apart.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-88}
# One BLAS thread per process: the node, its test and pytest share two cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Fail loudly, before any test, if this would not really be Jazzy with Jazzy-built interfaces.
bash scripts/build_ros.sh
python - <<'PY'
import importlib.metadata as metadata
from pathlib import Path

import instructsam_ros.msg

installed = {d.metadata["Name"].lower() for d in metadata.distributions()}
assert "ros-jazzy-rclpy" in installed and "ros-kilted-rclpy" not in installed, "rclpy here is not Jazzy's"
origin = Path(instructsam_ros.msg.__file__).resolve()
assert (Path.cwd() / "install" / "ros-jazzy").resolve() in origin.parents, f"interfaces from {origin}"
print(f"test_jazzy: ros-jazzy-rclpy {metadata.version('ros-jazzy-rclpy')}, interfaces from {origin.parent}")
PY
# `ros2 launch` for the launch tests (a no-op when installed; skipped without ../shared/wheels).
bash scripts/install_launch.sh
exec python -m pytest tests/ros -q "$@"
