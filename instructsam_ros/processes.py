"""Child processes (node, camera) that never outlive the demo or benchmark that started them."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_CHECKOUT = Path(__file__).resolve().parent.parent  # the directory holding this copy of instructsam_ros


def child_env() -> dict[str, str]:
    """This process's environment with this copy's directory first on PYTHONPATH, so that a child
    started as `python -m instructsam_ros...` runs the same code as its parent."""
    paths = (str(_CHECKOUT), os.environ.get("PYTHONPATH", ""))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the parent dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def start_child(args: list[str], **kwargs: Any) -> subprocess.Popen:
    """Popen that ties the child's life to this process where the OS allows it."""
    if sys.platform.startswith("linux"):
        kwargs.setdefault("preexec_fn", _die_with_parent)
    return subprocess.Popen(args, **kwargs)


def stop_child(process: subprocess.Popen, name: str, timeout: float = 20.0) -> None:
    """SIGINT (a clean ROS shutdown), then SIGKILL if it does not stop in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop on SIGINT; killing it", file=sys.stderr)
        process.kill()
        process.wait(timeout=5)
