"""The segment node's process: `instructsam-segment-node`, `ros2 run instructsam_ros segment_node`,
`python -m instructsam_ros.segment_node`.

SIGINT/SIGTERM stop the process within SHUTDOWN_BUDGET_S seconds, even while a model call or a
model load is still running (see `main`).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from instructsam_core.cli import quiet_libraries
from instructsam_ros.dds.profiles import use_large_data_profile
from instructsam_ros.segment_node.executor import FramesInlineExecutor
from instructsam_ros.segment_node.node import SegmentNode

# From SIGINT/SIGTERM to process exit, whatever is still running (a model call, a model load).
SHUTDOWN_BUDGET_S = 2.5
# How long the process waits for the inference worker to finish its batch before exiting anyway.
WORKER_JOIN_ON_EXIT_S = 1.0


def _exit_now(status: int, why: str = "") -> None:
    """End the process at once (no interpreter teardown), flushing what was printed."""
    if why:
        os.write(2, (why + "\n").encode())
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)  # C stdio buffers (logging, DDS) as well
    except (OSError, AttributeError):
        pass
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `segment_node` / `instructsam-segment-node` (ROS arguments accepted).

    SIGINT and SIGTERM are handled here rather than by rclpy: they set a flag that the spin
    loop checks every 0.1 s. (rclpy's handler shuts the context down under the running
    executor, which then sometimes fails with "context is not valid" and exit status 1.)
    Shutdown is bounded by SHUTDOWN_BUDGET_S: the worker gets WORKER_JOIN_ON_EXIT_S to finish
    its frame, the node's entities are destroyed, the context is shut down, and the process
    ends with os._exit, because a normal interpreter exit would first wait for any callback
    still running (a service call's inference, a model load in configure) and then for the
    interpreter's teardown (about a second with torch loaded). A watchdog ends the process if
    those steps themselves take longer than the budget. The model's memory goes with the
    process, so it is not released first.
    """
    use_large_data_profile()
    # No weight-loading bar: a node's log is read line by line (launch shows a bar as an empty line).
    quiet_libraries()
    rclpy.init(args=sys.argv if argv is None else argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    node = SegmentNode()
    # Frame, instruction and diagnostics callbacks in the spinning thread; services, lifecycle
    # transitions (a model load) and parameter changes on a pool (executor.py says why).
    executor = FramesInlineExecutor(node.inline_callback_groups(), num_threads=3)
    executor.add_node(node)
    if node.get_parameter("autostart").value:
        def autostart() -> None:
            timer.cancel()
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()

        timer = node.create_timer(0.0, autostart, callback_group=MutuallyExclusiveCallbackGroup())
    status = 0
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - reported, then the same bounded shutdown
        import traceback

        traceback.print_exc()
        status = 1
    watchdog = threading.Timer(
        SHUTDOWN_BUDGET_S, _exit_now,
        args=(status, f"[segment_node] shutdown took longer than {SHUTDOWN_BUDGET_S} s; exiting now"),
    )
    watchdog.daemon = True
    watchdog.start()
    if received:
        node.get_logger().info(f"{received[0]}: stopping")
    node.stop_for_exit(WORKER_JOIN_ON_EXIT_S)
    node.destroy_node()
    rclpy.try_shutdown()
    _exit_now(status)
    return status  # not reached
