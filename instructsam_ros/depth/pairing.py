"""Pairing colour frames with depth images by header stamp, without ROS.

The colour stream never waits for depth: a colour frame is segmented whatever happens to its
depth, and the 3-D step uses the depth image whose stamp is nearest to the colour frame's, if
one lies within the tolerance. The node looks for that partner twice: when the colour frame
arrives it holds on to the nearest depth image queued then (`nearest`; a depth image published
just before the colour frame, which a long model call could push out of the queue), and once
the model has finished it matches against the queue plus that held one (`match(held=...)`),
which also sees a depth image that arrived while the model ran.

When there is no partner, the reason is named (these are the per-cause counts in /diagnostics):
  no_depth         nothing arrived on the depth topic within `silence_s`: depth is missing
  depth_late       the newest depth image is older than the colour frame by more than the
                   tolerance: depth lags behind colour (its partner had not arrived in time)
  depth_early      the oldest depth image kept is newer than the colour frame by more than the
                   tolerance: depth is stamped ahead of colour, or the partner was already
                   pushed out of the queue (`depth_queue_size` depth images) before the colour
                   frame was processed
  depth_unmatched  depth images on both sides of the colour stamp, none within the tolerance
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PAIRED = "paired"
NO_DEPTH = "no_depth"
DEPTH_LATE = "depth_late"
DEPTH_EARLY = "depth_early"
DEPTH_UNMATCHED = "depth_unmatched"
MISSING_OUTCOMES = (NO_DEPTH, DEPTH_LATE, DEPTH_EARLY, DEPTH_UNMATCHED)


@dataclass
class Pairing:
    """The outcome of looking for a colour frame's depth partner."""

    outcome: str
    item: Any = None  # the paired depth message (outcome PAIRED)
    offset_s: float = float("inf")  # depth stamp - colour stamp of the partner
    problem: str = ""  # one line when there is no partner

    @property
    def paired(self) -> bool:
        return self.outcome == PAIRED


class DepthQueue:
    """The last `size` depth messages by stamp; thread-safe (callbacks add, the worker matches)."""

    def __init__(self, size: int = 10, silence_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._items: deque[tuple[int, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._clock = clock
        self._last_arrival: float | None = None
        self.silence_s = silence_s

    def resize_to(self, size: int) -> None:
        """Keep at most `size` depth images from now on (the newest, when shrinking)."""
        size = max(1, int(size))
        with self._lock:
            if self._items.maxlen != size:
                self._items = deque(self._items, maxlen=size)

    def add(self, stamp_ns: int, item: Any) -> None:
        with self._lock:
            self._items.append((int(stamp_ns), item))
            self._last_arrival = self._clock()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._last_arrival = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def nearest(self, stamp_ns: int) -> tuple[int, Any] | None:
        """(stamp, message) of the queued depth image stamped nearest to `stamp_ns`, if any."""
        with self._lock:
            if not self._items:
                return None
            return min(self._items, key=lambda entry: abs(entry[0] - stamp_ns))

    def match(self, stamp_ns: int, tolerance_s: float, held: tuple[int, Any] | None = None) -> Pairing:
        """The depth message stamped nearest to `stamp_ns` within `tolerance_s`, or why none is;
        `held` is a (stamp, message) kept from an earlier look (`nearest`), a candidate too."""
        with self._lock:
            items = list(self._items)
            last_arrival = self._last_arrival
        if held is not None and all(entry[1] is not held[1] for entry in items):
            items.append(held)
        tolerance_ns = int(round(tolerance_s * 1e9))
        if not items or last_arrival is None:
            return Pairing(NO_DEPTH, problem="no depth image received on the depth topic")
        silent = self._clock() - last_arrival
        if silent > self.silence_s:
            return Pairing(NO_DEPTH, problem=f"no depth image received for {silent:.1f} s")
        best_stamp, best_item = min(items, key=lambda entry: abs(entry[0] - stamp_ns))
        offset_ns = best_stamp - stamp_ns
        if abs(offset_ns) <= tolerance_ns:
            return Pairing(PAIRED, best_item, offset_ns / 1e9)
        tolerance_ms = tolerance_s * 1e3
        newest = max(entry[0] for entry in items)
        oldest = min(entry[0] for entry in items)
        if newest < stamp_ns - tolerance_ns:
            return Pairing(DEPTH_LATE, offset_s=offset_ns / 1e9, problem=(
                f"depth late: the newest depth image is {(stamp_ns - newest) / 1e6:.0f} ms older than the colour "
                f"frame (depth_sync_tolerance {tolerance_ms:.0f} ms)"))
        if oldest > stamp_ns + tolerance_ns:
            return Pairing(DEPTH_EARLY, offset_s=offset_ns / 1e9, problem=(
                f"depth early: the oldest depth image kept is {(oldest - stamp_ns) / 1e6:.0f} ms newer than the "
                f"colour frame (depth_sync_tolerance {tolerance_ms:.0f} ms; depth stamped ahead of colour, or "
                "its partner left the depth_queue_size queue before the frame was processed)"))
        side = "newer" if offset_ns > 0 else "older"
        return Pairing(DEPTH_UNMATCHED, offset_s=offset_ns / 1e9, problem=(
            f"no depth image within {tolerance_ms:.0f} ms of the colour frame (the nearest is {abs(offset_ns) / 1e6:.0f} ms "
            f"{side}): raise depth_sync_tolerance or synchronise the cameras' stamps"))
