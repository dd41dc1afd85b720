#!/usr/bin/env bash
# Builds the ROS 2 interfaces of instructsam_ros (msg/, srv/) with colcon from the PyPI ROS 2
# wheels in .venv, into build/ros and install/ros. Quick no-op when nothing changed.
# On a robot with an apt-installed ROS 2 use plain `colcon build` instead (README).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ -z "${VIRTUAL_ENV:-}" ]; then
  . .venv/bin/activate
fi
BUILD_BASE=${INSTRUCTSAM_ROS_BUILD:-build/ros}
INSTALL_BASE=${INSTRUCTSAM_ROS_INSTALL:-install/ros}
STAMP="$INSTALL_BASE/.instructsam_ros_build_stamp"

# Everything the generated code depends on; the Python sources are installed too, but the
# node runs from the source tree in development, so their contents do not force a rebuild.
# Their names do: a module moved or removed must not linger in the install space.
shopt -s nullglob
INPUTS=(package.xml CMakeLists.txt msg/*.msg srv/*.srv launch/* instructsam_ros/config/*)
fingerprint() {
  { sha256sum "${INPUTS[@]}"; find instructsam_ros instructsam_core -name '*.py' -not -path '*/__pycache__/*' | sort
    python -c 'import sys; print(sys.executable, sys.version)'; } | sha256sum | cut -d' ' -f1
}
WANT=$(fingerprint)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "build_ros: $INSTALL_BASE is up to date"
  exit 0
fi

# The wheels' CMake packages live under the venv prefix.
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
start=$(date +%s)
# The installed copies of the Python packages go first (CMake's install only adds files, so a
# moved module would stay importable there); the install step puts back what is current,
# generated interfaces included.
rm -rf "$INSTALL_BASE"/lib/python3*/site-packages/instructsam_ros "$INSTALL_BASE"/lib/python3*/site-packages/instructsam_core
colcon --log-base log/ros build \
  --paths "$ROOT" \
  --build-base "$BUILD_BASE" \
  --install-base "$INSTALL_BASE" \
  --merge-install \
  --event-handlers console_cohesion- console_stderr- status- \
  --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$(command -v python)" \
  -DCMAKE_BUILD_TYPE=Release
echo "$WANT" > "$STAMP"
echo "build_ros: built instructsam_ros interfaces into $INSTALL_BASE in $(( $(date +%s) - start )) s"
