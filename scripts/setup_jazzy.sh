#!/usr/bin/env bash
# Creates .venv-jazzy: the project plus the ROS 2 Jazzy (LTS) wheels, and builds the interfaces
# into build/ros-jazzy and install/ros-jazzy, so tests/ros also runs against Jazzy
# (scripts/test_jazzy.sh). Jazzy and Kilted wheels share names, hence a venv and folders of
# its own. Safe to re-run: pip skips what is installed, build_ros.sh what is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-jazzy/bin/python ]; then
  "$PYTHON" -m venv .venv-jazzy
fi
. .venv-jazzy/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: a looser spec pulls a multi-GB CUDA build (docs/architecture.md).
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all]"
python -m pip install -q -r requirements-ros-jazzy.txt
INSTRUCTSAM_ROS_BUILD=build/ros-jazzy INSTRUCTSAM_ROS_INSTALL=install/ros-jazzy bash scripts/build_ros.sh
# The same `ros2 launch` wheels work with Jazzy's rclpy (tests/ros/test_ros_launch.py runs there too).
bash scripts/install_launch.sh
echo "setup_jazzy done: activate with '. .venv-jazzy/bin/activate'"
