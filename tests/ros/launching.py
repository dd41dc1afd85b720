"""Test-side helpers for `ros2 launch` / `ros2 run` as processes: availability, environment, the
README's commands, a process group that is stopped with SIGINT and never left behind.

`ros2 launch` comes from wheels built for the PyPI ROS 2 wheels (`launch`, `launch_ros`, `ros2cli`
are not on PyPI): scripts/install_launch.sh puts them into the venv from ../shared/wheels/ros2-launch.
Without them the launch tests are skipped, with that reason, except in CI (CI=true), where they fail.
"""
from __future__ import annotations

import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructsam_ros import generated_install_dir

REPO = Path(__file__).resolve().parents[2]
README = REPO / "instructsam_ros" / "README.md"
ROS2 = Path(sys.executable).parent / "ros2"
STOP_TIMEOUT_S = 15.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def launch_missing() -> str | None:
    """Why `ros2 launch` cannot run here (None when it can)."""
    if not ROS2.is_file():
        return (f"ros2 launch is not installed in {Path(sys.prefix).name}: scripts/install_launch.sh installs it from "
                "../shared/wheels/ros2-launch (not found next to this checkout)")
    if generated_install_dir() is None:
        return "the package is not built (scripts/build_ros.sh)"
    return None


def require_launch() -> None:
    """Skip the calling test without `ros2 launch`; fail it in CI, where the launch tests must run."""
    reason = launch_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the launch tests: {reason}")
    pytest.skip(reason)


def launch_env() -> dict[str, str]:
    """The environment `ros2 launch` needs with the wheels: the package's install space and the venv
    (launch's own share files) on AMENT_PREFIX_PATH, the venv's python first on PATH (the
    executables start with `#!/usr/bin/env python3`), the package's libraries on LD_LIBRARY_PATH."""
    install = generated_install_dir()
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "AMENT_PREFIX_PATH": os.pathsep.join([str(install), sys.prefix]),
        "INSTRUCTSAM_ROS_INSTALL": str(install),
        "LD_LIBRARY_PATH": os.pathsep.join(p for p in (str(install / "lib"), os.environ.get("LD_LIBRARY_PATH", "")) if p),
        "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }


def readme_commands(section: str = "## On a robot") -> list[str]:
    """Every `ros2 launch` and `ros2 run` command in the README section's shell blocks, continuation
    lines joined."""
    text = README.read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    body = text[start:end if end >= 0 else None]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split("#", 1)[0].split())
            if line.startswith(("ros2 launch ", "ros2 run ")):
                commands.append(line)
    return commands


def _child_setup() -> None:
    """Before exec: SIGINT back to its default (a process started from a background shell
    inherits it ignored, and then launch never sees it), and SIGINT when the test process dies."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


class RosCommand:
    """A `ros2 ...` command in a process group of its own (what a terminal's Ctrl-C reaches),
    its output in a log file."""

    def __init__(self, command: str, log_path: Path, cwd: Path) -> None:
        args = shlex.split(command)
        assert args[0] == "ros2", command
        self.command = command
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.started = time.monotonic()
        # launch_ros leaves a /tmp/launch_params_* file per run and launch a log folder: both here.
        env = {**launch_env(), "TMPDIR": str(cwd), "ROS_LOG_DIR": str(cwd / "ros_log")}
        self.proc = subprocess.Popen([str(ROS2), *args[1:]], cwd=cwd, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_child_setup)
        self.pgid = self.proc.pid

    def lines(self) -> list[str]:
        """The output so far, colour codes and carriage returns removed."""
        self._log.flush()
        return [_ANSI.sub("", line).replace("\r", "") for line in self.log_path.read_text(errors="replace").splitlines()]

    def output(self) -> str:
        return "\n".join(self.lines())

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def interrupt(self) -> tuple[int, float]:
        """Ctrl-C: SIGINT to the whole group; (exit status, seconds to exit)."""
        start = time.monotonic()
        os.killpg(self.pgid, signal.SIGINT)
        status = self.proc.wait(timeout=STOP_TIMEOUT_S)
        return status, time.monotonic() - start

    def close(self) -> None:
        """Whatever happened: nothing of the group is left running."""
        if self.group_alive():
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)
        self._log.close()


def node_lines(lines: list[str], node: str = "segment_node-1") -> list[str]:
    """What the node printed (launch prefixes each of its lines with `[segment_node-1] `)."""
    prefix = f"[{node}] "
    return [line[len(prefix):] for line in lines if line.startswith(prefix) or line == prefix.rstrip()]


def stray_lines(lines: list[str]) -> list[str]:
    """Lines of a launch that are neither launch's own INFO lines nor the node's INFO log lines:
    errors, warnings, progress bars, empty lines."""
    stray = []
    for line in lines:
        if re.match(r"^\[INFO\] \[(launch|segment_node-1)\]: ", line):
            continue
        if re.match(r"^\[segment_node-1\] \[INFO\] \[\d+\.\d+\] \[[\w./]+\]: \S", line):
            continue
        stray.append(line)
    return stray
