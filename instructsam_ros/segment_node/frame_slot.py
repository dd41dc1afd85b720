"""Latest-wins frame buffers between the image callbacks and the inference worker.

The callback never waits for the model: it drops the frame in its camera's slot, replacing (and
counting) any frame of that camera the worker has not started yet. The worker therefore always
processes the newest frame of each camera, and latency stays bounded by one model call whatever
the camera rates.

`LatestSlots` holds one slot per camera and hands the worker a batch: the newest frame of every
camera that has one, up to a maximum. A camera never holds more than one seat in a batch,
however fast it publishes, and when more cameras wait than a batch takes, those served longest
ago go first, so every waiting camera is served within ceil(cameras / max_batch) batches.
"""
from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


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


class LatestSlots(Generic[K, T]):
    """One latest-wins slot per key; `take_batch` empties up to `max_items` slots, fairly.

    Fairness: the slots taken are those whose key was served longest ago (never served first),
    ties broken by the order in which the waiting items arrived. Nothing waits to fill a batch:
    the worker takes what is there, so batches grow only while the model is busy.
    """

    def __init__(self) -> None:
        self._items: dict[K, tuple[int, T]] = {}  # key -> (arrival number, item)
        self._served: dict[K, int] = {}  # key -> number of the batch that last took it
        self._arrivals = 0
        self._batches = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, key: K, item: T) -> bool:
        """Store `item` as `key`'s newest; True when it replaced an item of `key` never taken."""
        with self._cond:
            if self._closed:
                return False
            replaced = key in self._items
            self._arrivals += 1
            self._items[key] = (self._arrivals, item)
            self._cond.notify()
            return replaced

    def take_batch(self, max_items: int, timeout: float | None = None) -> list[tuple[K, T]]:
        """Up to `max_items` (key, item) pairs, one per key; [] on timeout or after close()."""
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._closed or not self._items:
                return []
            order = sorted(self._items, key=lambda k: (self._served.get(k, -1), self._items[k][0]))
            self._batches += 1
            batch = []
            for key in order[:max_items]:
                batch.append((key, self._items.pop(key)[1]))
                self._served[key] = self._batches
            return batch

    def discard(self, key: K) -> bool:
        """Forget `key` (a camera removed): its waiting item is dropped; True when there was one."""
        with self._cond:
            self._served.pop(key, None)
            return self._items.pop(key, None) is not None

    def clear(self) -> dict[K, int]:
        """Drop every waiting item; returns how many were dropped per key (0 or 1)."""
        with self._cond:
            dropped = {key: 1 for key in self._items}
            self._items.clear()
            return dropped

    def pending(self) -> list[K]:
        with self._cond:
            return list(self._items)

    def close(self) -> None:
        """Wake the worker for good: later `take_batch` calls return [] at once."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
