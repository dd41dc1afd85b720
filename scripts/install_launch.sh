#!/usr/bin/env bash
# Installs `ros2 launch` / `ros2 run` into the active venv: launch, launch_ros, ros2cli, ... built as
# wheels for the PyPI ROS 2 wheels (they are not on PyPI), from ../shared/wheels/ros2-launch (README
# there). The launch tests (tests/ros/test_ros_launch.py) need them. Without that folder it says so
# and changes nothing (the launch tests are then skipped), except in CI (CI=true), where the launch
# tests must run: then it fails. Quick no-op when they are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${VIRTUAL_ENV:?activate a venv first}"
WHEELS=${INSTRUCTSAM_LAUNCH_WHEELS:-$(pwd)/../shared/wheels/ros2-launch}
if ! ls "$WHEELS"/launch_ros-*.whl > /dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    echo "install_launch: no ros2 launch wheels in $WHEELS; CI must run the launch tests" >&2
    exit 1
  fi
  echo "install_launch: no ros2 launch wheels in $WHEELS: the launch tests will be skipped"
  exit 0
fi
if [ -x "$VIRTUAL_ENV/bin/ros2" ] && python -c 'import launch_ros, ros2launch, ros2run, osrf_pycommon' 2> /dev/null; then
  exit 0
fi
# --no-deps: their one missing requirement, ament_index_python, is installed under the wheels'
# name ros-*-ament-index-python (pip's resolver then reports it missing: harmless, filtered).
if ! out=$(python -m pip install -q --no-deps "$WHEELS"/*.whl 2>&1); then
  echo "$out" >&2
  exit 1
fi
python -m pip install -q "osrf-pycommon==2.0.2"
echo "install_launch: ros2 launch installed into $VIRTUAL_ENV from $WHEELS"
