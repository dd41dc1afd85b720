#!/usr/bin/env bash
# Runs the whole test suite (core, training, evaluation, ROS node over real DDS).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
# DDS traffic never leaves this machine; a private domain keeps parallel runs apart.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-87}
# One BLAS thread per process: the node, its test and pytest share two cores, and
# oversubscribed threads made tiny-model calls 70x slower under load.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# `ros2 launch` for the launch tests (a no-op when installed; skipped without ../shared/wheels).
bash scripts/install_launch.sh
# Test paths given (e.g. `bash scripts/test.sh tests/test_masks.py -x`) run alone; else the whole suite.
for arg in "$@"; do
  if [ -e "${arg%%::*}" ]; then
    exec python -m pytest -q "$@"
  fi
done
exec python -m pytest tests -q "$@"
