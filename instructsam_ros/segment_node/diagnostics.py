"""Counters and timings of the stream, their /diagnostics message, and rate-limited warnings.

Everything a user needs to tell "no output" apart: is the node active, does it have an
instruction, do frames arrive, are they dropped (replaced by a newer frame, too old, or
malformed), how long the model takes, how old frames are when processed, and how much device
memory the model holds. A node of several cameras publishes one status for the node (all
cameras together, batch sizes, memory) and one per camera (its instruction, counters, latency).
With depth input, every status also counts each colour frame's 3-D outcome by cause
(`3d_paired`, `3d_no_depth`, `3d_depth_late`, ...: depth.step.OUTCOMES) and times the 3-D step.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from instructsam_ros.depth.step import OUTCOMES as DEPTH_OUTCOMES

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR


@dataclass
class FrameTiming:
    finished: float  # monotonic seconds
    processing_latency: float  # arrival -> publish
    model_latency: float
    frame_age: float  # stamp -> start of processing


class StreamStats:
    """Thread-safe counters shared by the image callback, the worker and the timer."""

    def __init__(self, window: int = 200, fps_window_s: float = 5.0) -> None:
        self._lock = threading.Lock()
        self._timings: deque[FrameTiming] = deque(maxlen=window)
        self.fps_window_s = fps_window_s
        self.received = 0
        self.processed = 0
        self.dropped_replaced = 0
        self.dropped_stale = 0
        self.dropped_bad_input = 0
        self.skipped_no_instruction = 0
        self.last_problem = ""
        # Model calls (a batch holds one frame per camera) and the frames they carried.
        self.batches = 0
        self.batched_frames = 0
        self.largest_batch = 0
        # 3-D from depth: one outcome per colour frame (depth.step.OUTCOMES) and the step's time.
        self.depth_enabled = False
        self.depth_outcomes: dict[str, int] = dict.fromkeys(DEPTH_OUTCOMES, 0)
        self._depth_latencies: deque[float] = deque(maxlen=window)

    def count(self, field: str, problem: str | None = None) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + 1)
            if problem:
                self.last_problem = problem

    def record(self, timing: FrameTiming) -> None:
        with self._lock:
            self.processed += 1
            self._timings.append(timing)

    def record_depth(self, outcome: str, latency: float, problem: str | None = None) -> None:
        """One colour frame's 3-D outcome and the seconds its 3-D step took."""
        with self._lock:
            self.depth_outcomes[outcome] = self.depth_outcomes.get(outcome, 0) + 1
            self._depth_latencies.append(latency)
            if problem:
                self.last_problem = problem

    def depth_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.depth_outcomes)

    def depth_latency(self) -> tuple[float, float]:
        """(median, p95) seconds of the 3-D step over the window (zeros before any frame)."""
        with self._lock:
            values = np.array(self._depth_latencies, dtype=np.float64)
        if not values.size:
            return 0.0, 0.0
        return float(np.median(values)), float(np.percentile(values, 95))

    def record_batch(self, size: int) -> None:
        with self._lock:
            self.batches += 1
            self.batched_frames += size
            self.largest_batch = max(self.largest_batch, size)

    @property
    def dropped(self) -> int:
        return self.dropped_replaced + self.dropped_stale + self.dropped_bad_input

    def summary(self, now: float | None = None) -> dict[str, float]:
        """Median/p95 latencies (seconds) over the window and fps over the last seconds."""
        now = time.monotonic() if now is None else now
        with self._lock:
            timings = list(self._timings)
        recent = [t for t in timings if now - t.finished <= self.fps_window_s]
        out = {"fps": 0.0}
        if len(recent) >= 2:
            span = recent[-1].finished - recent[0].finished
            out["fps"] = (len(recent) - 1) / span if span > 0 else 0.0
        elif len(recent) == 1:
            out["fps"] = 1.0 / self.fps_window_s
        for name in ("processing_latency", "model_latency", "frame_age"):
            values = np.array([getattr(t, name) for t in timings], dtype=np.float64)
            out[f"{name}_median"] = float(np.median(values)) if values.size else 0.0
            out[f"{name}_p95"] = float(np.percentile(values, 95)) if values.size else 0.0
        return out


def device_memory_bytes(device: str | None) -> tuple[str, int]:
    """(what was measured, bytes): CUDA memory held by torch on a GPU, else the process RSS."""
    if device and device.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                return "cuda_reserved", int(torch.cuda.memory_reserved(torch.device(device)))
        except Exception:  # noqa: BLE001 - diagnostics must never raise
            pass
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return "process_rss", pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return "unknown", 0


def build_status(
    name: str,
    hardware_id: str,
    level: int,
    message: str,
    stats: StreamStats,
    extra: dict[str, str],
    device: str | None = None,
    memory: bool = True,
    batches: bool = True,
) -> DiagnosticStatus:
    """One DiagnosticStatus: `extra`, the counters and timings of `stats`, and (with `memory`)
    the device memory the process holds; (with `batches`) the model calls' batch sizes."""
    summary = stats.summary()
    values = {
        **extra,
        "frames_received": str(stats.received),
        "frames_processed": str(stats.processed),
        "frames_dropped": str(stats.dropped),
        "dropped_replaced_by_newer": str(stats.dropped_replaced),
        "dropped_too_old": str(stats.dropped_stale),
        "dropped_bad_input": str(stats.dropped_bad_input),
        "skipped_no_instruction": str(stats.skipped_no_instruction),
        "fps": f"{summary['fps']:.2f}",
        "latency_median_ms": f"{summary['processing_latency_median'] * 1e3:.1f}",
        "latency_p95_ms": f"{summary['processing_latency_p95'] * 1e3:.1f}",
        "model_latency_median_ms": f"{summary['model_latency_median'] * 1e3:.1f}",
        "frame_age_median_ms": f"{summary['frame_age_median'] * 1e3:.1f}",
    }
    if stats.depth_enabled:
        for outcome, count in stats.depth_counts().items():
            values[f"3d_{outcome}"] = str(count)
        median, p95 = stats.depth_latency()
        values["depth_step_median_ms"] = f"{median * 1e3:.2f}"
        values["depth_step_p95_ms"] = f"{p95 * 1e3:.2f}"
    if batches:
        values["model_calls"] = str(stats.batches)
        values["frames_per_call_mean"] = f"{stats.batched_frames / stats.batches:.2f}" if stats.batches else "0.00"
        values["frames_per_call_max"] = str(stats.largest_batch)
    if memory:
        kind, amount = device_memory_bytes(device)
        values["device_memory_mb"] = f"{amount / 2**20:.1f}"
        values["device_memory_kind"] = kind
    values["last_problem"] = stats.last_problem
    status = DiagnosticStatus()
    status.level = bytes([level]) if isinstance(level, int) else level
    status.name = name
    status.hardware_id = hardware_id
    status.message = message
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    return status


def build_diagnostics(
    name: str,
    hardware_id: str,
    level: int,
    message: str,
    stats: StreamStats,
    extra: dict[str, str],
    stamp,
    device: str | None,
    more: list[DiagnosticStatus] | tuple[DiagnosticStatus, ...] = (),
) -> DiagnosticArray:
    """A DiagnosticArray with one status for the node, then `more` (one per camera)."""
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [build_status(name, hardware_id, level, message, stats, extra, device), *more]
    return array


class ProblemLog:
    """Rate-limited warnings, one stream per kind of problem, counting what was held back.

    Kinds are the reasons an input is refused (`BadImageError.kind`, `BadInstructionError.kind`,
    "stale", ...), per camera, so the first rejection of every kind is always logged.
    """

    def __init__(self, logger, period_s: float = 2.0) -> None:
        self._logger = logger
        self._period = period_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -1e9) < self._period:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            held = self._held.pop(kind, 0)
            self._last[kind] = now
        suffix = f" ({held} more like this since the last report)" if held else ""
        self._logger.warning(message + suffix)
