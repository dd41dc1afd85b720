"""A node spun by a thread of its own, for the tools that drive the segment node from outside
(the demo and the benchmark): their main thread publishes frames and waits while callbacks run."""
from __future__ import annotations

import threading


class BackgroundSpinner:
    """Spins `node` on a single-threaded executor in a daemon thread until `stop()`.

    `spin_once` with a short timeout lets `stop()` take effect within 50 ms; `stop()` also
    shuts the executor down (the node itself stays: its owner destroys it).
    """

    def __init__(self, node) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self._ok = rclpy.ok
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self._running and self._ok():
            self.executor.spin_once(timeout_sec=0.05)

    def stop(self) -> None:
        self._running = False
        self._thread.join(timeout=5)
        self.executor.shutdown(timeout_sec=1)
