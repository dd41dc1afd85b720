"""The node's executor: frame callbacks run inline, everything else on a small thread pool.

rclpy's MultiThreadedExecutor hands every callback to a thread pool. At camera rates that
costs the node most of its CPU in the executor's own Python (measured on two cores: a 60 Hz
camera into a one-camera node got 22-44 of 240 frames answered, 240 of 240 with every callback
run in the spinning thread), and the inference worker waits for the GIL meanwhile. A
SingleThreadedExecutor, though, would run a model load (configure) or a Segment call in the
spinning thread, and then nothing else - parameters, lifecycle queries, SIGTERM - would be
handled until it returned.

So callbacks of the `inline` callback groups (image and instruction subscriptions, the
diagnostics timer: each a few microseconds of work) run in the thread that spins, as a
SingleThreadedExecutor runs them, and every other callback (services, lifecycle transitions,
parameter changes, timers of other groups) is handed to a thread pool, as a
MultiThreadedExecutor does.
"""
from __future__ import annotations

from concurrent.futures import Future as PoolFuture
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rclpy.executors import ConditionReachedException, ShutdownException, SingleThreadedExecutor, TimeoutException


class FramesInlineExecutor(SingleThreadedExecutor):
    """See the module docstring. `inline` holds callback groups whose callbacks never block."""

    def __init__(self, inline: list[Any], num_threads: int = 3, *, context=None) -> None:
        super().__init__(context=context)
        self._inline = list(inline)
        self._pool = ThreadPoolExecutor(num_threads, thread_name_prefix="rclpy-callbacks")
        # Pooled handlers (rclpy Tasks) and the pool's future of their latest run. rclpy yields a
        # task again while it is neither running nor done (queued in the pool, or a coroutine
        # waiting on a future); it is run again only once its previous run has ended.
        self._pooled: dict[int, tuple[Any, PoolFuture]] = {}

    def add_inline_group(self, group: Any) -> None:
        if not any(group is g for g in self._inline):
            self._inline.append(group)

    def _runs_inline(self, entity: Any) -> bool:
        group = getattr(entity, "callback_group", None)
        return group is not None and any(group is g for g in self._inline)

    def spin_once(self, timeout_sec: float | None = None) -> None:
        try:
            handler, entity, _ = self.wait_for_ready_callbacks(timeout_sec)
        except (ShutdownException, TimeoutException, ConditionReachedException):
            self._reap()
            return
        if self._runs_inline(entity):
            handler()
            exception = handler.exception()
            if exception is not None:
                raise exception
        else:
            previous = self._pooled.get(id(handler))
            if previous is None or previous[1].done():
                self._pooled[id(handler)] = (handler, self._pool.submit(handler))
        self._reap()

    def _reap(self) -> None:
        """Forget finished pooled handlers, raising a callback's exception as rclpy's executors do."""
        for key, (handler, future) in list(self._pooled.items()):
            if handler.done():
                del self._pooled[key]
                handler.result()
            elif future.done() and future.exception() is not None:
                del self._pooled[key]
                raise future.exception()

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        done = super().shutdown(timeout_sec)
        self._pool.shutdown(wait=False)  # a running model load is not awaited
        return done
