"""executor.FramesInlineExecutor: inline groups run in the spinning thread, others on its pool."""
from __future__ import annotations

import threading
import time

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

from instructsam_ros.segment_node.executor import FramesInlineExecutor


def test_inline_callbacks_keep_running_while_a_pooled_callback_blocks(harness):
    node = rclpy.create_node("executor_test", context=harness.context)
    inline_group, pooled_group = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
    spinner = threading.get_ident()
    inline_threads: list[int] = []
    inline_during_block: list[float] = []
    blocking = {"thread": 0, "start": 0.0, "end": 0.0, "runs": 0}

    def fast() -> None:
        inline_threads.append(threading.get_ident())
        if blocking["start"] and not blocking["end"]:
            inline_during_block.append(time.monotonic())

    def slow() -> None:  # a model load or a Segment call; runs once, as the node's autostart does
        timers[1].cancel()
        blocking.update(thread=threading.get_ident(), start=time.monotonic(), runs=blocking["runs"] + 1)
        time.sleep(0.5)
        blocking["end"] = time.monotonic()

    timers = [node.create_timer(0.01, fast, callback_group=inline_group),
              node.create_timer(0.05, slow, callback_group=pooled_group)]
    executor = FramesInlineExecutor([inline_group], num_threads=2, context=harness.context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 3.0
        while not blocking["end"] and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
    finally:
        timers[0].cancel()
        drain = time.monotonic() + 1.0
        while executor._pooled and time.monotonic() < drain:  # callbacks already handed to the pool
            executor.spin_once(timeout_sec=0.05)
        executor.shutdown()
        node.destroy_node()
    assert blocking["end"] and blocking["runs"] == 1, "the pooled callback did not run exactly once"
    assert set(inline_threads) == {spinner}, "inline callbacks ran outside the spinning thread"
    assert blocking["thread"] != spinner, "the blocking callback ran in the spinning thread"
    assert len(inline_during_block) >= 10, f"only {len(inline_during_block)} inline callbacks during the 0.5 s block"
