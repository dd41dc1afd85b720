"""A one-slot, latest-wins frame buffer between the image callback and the inference worker.

The callback never waits for the model: it drops the frame in the slot, replacing (and
counting) any frame the worker has not started yet. The worker therefore always processes the
newest frame, and latency stays bounded by one inference whatever the camera rate.
"""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds at most one item; `put` replaces, `take` blocks until an item or close."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._closed = False
        self._cond = threading.Condition()
        self.replaced = 0  # items overwritten before anyone took them

    def put(self, item: T) -> bool:
        """Store `item`; True when it replaced an item that was never taken."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.replaced += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item (emptying the slot), or None on timeout or after close()."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return None if self._closed else item

    def clear(self) -> bool:
        """Drop the pending item, if any; True when there was one."""
        with self._cond:
            had = self._item is not None
            self._item = None
            return had

    def close(self) -> None:
        """Wake the worker for good: later `take` calls return None at once."""
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
