"""What the demo prints and saves: every result with its instances (and their 3-D positions), the
overlay of every result as a PNG, and at the end how many frames found something per camera and
instruction."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np


def position(location) -> str:
    """' at (x, y, z) m' for a located instance (its centre, in the depth camera's optical frame)."""
    if location.status == location.OK:
        c = location.center
        return f" at ({c.x:+.2f}, {c.y:+.2f}, {c.z:.2f}) m"
    if location.status == location.TOO_FEW_VALID:
        return f" 3-D: only {location.valid_pixels} valid depth pixels"
    return ""


class Recorder:
    """Collects results and overlays per camera (matched by stamp), prints and saves them."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.lock = threading.Lock()
        self.results: dict[tuple[str, int], object] = {}
        self.overlays: dict[tuple[str, int], object] = {}
        self.index: dict[tuple[str, int], int] = {}
        self.order: list[tuple[str, int]] = []
        self.first_result_at: float | None = None
        self.latencies: list[float] = []
        # (camera, instruction) -> [results, results with at least one instance], in the order first seen.
        self.found: dict[tuple[str, str], list[int]] = {}

    def on_result(self, camera: str, msg) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        key = (camera, stamp)
        now_ns = time.time_ns()
        with self.lock:
            self.results[key] = msg
            self.order.append(key)
            self.index[key] = len(self.order)
            self.latencies.append((now_ns - stamp) / 1e9)
            if self.first_result_at is None:
                self.first_result_at = time.monotonic()
            index = len(self.order)
            counts = self.found.setdefault((camera, msg.instruction), [0, 0])
            counts[0] += 1
            counts[1] += bool(msg.instances)
        parts = [f"#{i.id} {i.phrase} {i.score:.2f} box=({i.box.x_offset},{i.box.y_offset},{i.box.width},{i.box.height})"
                 f"{position(i.location)}" for i in msg.instances[:6]]
        more = f" (+{len(msg.instances) - 6} more)" if len(msg.instances) > 6 else ""
        depth = f" [3-D missing: {msg.depth_problem}]" if msg.depth_status not in (msg.DEPTH_DISABLED, msg.DEPTH_OK) else ""
        print(f"frame {index:04d} {camera} [{msg.instruction!r} -> phrases {list(msg.phrases)}] "
              f"{len(msg.instances)} instances: {'; '.join(parts) or '-'}{more}{depth}", flush=True)
        self._save(key)

    def summary(self, asked: list[tuple[str, str]]) -> list[str]:
        """One line per (camera, instruction) (those asked, then any other a result answered):
        how many of its results found at least one instance."""
        with self.lock:
            found = {key: tuple(counts) for key, counts in self.found.items()}
        lines = []
        for camera, text in dict.fromkeys([*asked, *found]):
            results, hits = found.get((camera, text), (0, 0))
            lines.append(f"demo: {camera} {text!r}: {hits} of {results} frames found something")
        return lines

    def on_overlay(self, camera: str, msg) -> None:
        key = (camera, msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
        with self.lock:
            self.overlays[key] = msg
        self._save(key)

    def _save(self, key: tuple[str, int]) -> None:
        import cv2

        from instructsam_ros.messages.images import image_msg_to_array

        with self.lock:
            if key not in self.results or key not in self.overlays:
                return
            index = self.index[key]
            overlay = self.overlays.pop(key)
        rgb = image_msg_to_array(overlay)
        cv2.imwrite(str(self.out_dir / f"overlay_{key[0]}_{index:04d}.png"), np.ascontiguousarray(rgb[:, :, ::-1]))
