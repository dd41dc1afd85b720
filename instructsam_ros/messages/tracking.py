"""Instance ids that stay the same for the same object from frame to frame.

The model segments each frame independently, so its output order says nothing about
identity. Each new frame's instances are matched to the recent tracks of the same phrase by
box IoU, greedily from the best overlap down (boxes are cheap to compare at any resolution
and objects move little between consecutive frames). A matched instance inherits the track's
id; an unmatched one opens a new track. Tracks survive a few frames without a match so that a
missed detection does not renumber the object.

Ids are 1..65535 so that they can be written into the mono16 label image; after 65535 the
counter wraps, skipping ids still held by live tracks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_ID = 65535


@dataclass
class Track:
    track_id: int
    phrase: str
    box: tuple[float, float, float, float]
    last_frame: int


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes; 0 when either is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


class InstanceTracker:
    """Assigns stable ids to per-frame instances (phrase + box)."""

    def __init__(self, iou_threshold: float = 0.3, max_missed_frames: int = 5) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_missed_frames < 0:
            raise ValueError(f"max_missed_frames must be >= 0, got {max_missed_frames}")
        self.iou_threshold = iou_threshold
        self.max_missed_frames = max_missed_frames
        self._tracks: list[Track] = []
        self._frame = 0
        self._next_id = 1

    def reset(self) -> None:
        """Forget every track (ids restart at 1)."""
        self._tracks = []
        self._frame = 0
        self._next_id = 1

    def _new_id(self, taken: set[int]) -> int:
        for _ in range(MAX_ID):
            candidate = self._next_id
            self._next_id = self._next_id % MAX_ID + 1
            if candidate not in taken:
                return candidate
        raise RuntimeError("more than 65535 live instance tracks")

    def assign(self, phrases: Sequence[str], boxes: Sequence[Sequence[float]]) -> list[int]:
        """Ids for this frame's instances, in input order; updates the tracks."""
        if len(phrases) != len(boxes):
            raise ValueError(f"{len(phrases)} phrases but {len(boxes)} boxes")
        self._frame += 1
        live = [t for t in self._tracks if self._frame - t.last_frame <= self.max_missed_frames + 1]
        pairs = []
        for i, (phrase, box) in enumerate(zip(phrases, boxes)):
            for j, track in enumerate(live):
                if track.phrase != phrase:
                    continue
                iou = box_iou(box, track.box)
                if iou >= self.iou_threshold:
                    pairs.append((iou, i, j))
        # Greedy from the best overlap down; ties broken by input order, then track order.
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        ids: list[int | None] = [None] * len(phrases)
        used_tracks: set[int] = set()
        for _, i, j in pairs:
            if ids[i] is not None or j in used_tracks:
                continue
            ids[i] = live[j].track_id
            used_tracks.add(j)
            live[j].box = tuple(float(v) for v in boxes[i])
            live[j].last_frame = self._frame
        taken = {t.track_id for t in live}
        for i, box in enumerate(boxes):
            if ids[i] is None:
                new_id = self._new_id(taken)
                taken.add(new_id)
                ids[i] = new_id
                live.append(Track(new_id, phrases[i], tuple(float(v) for v in box), self._frame))
        self._tracks = live
        return [int(i) for i in ids]  # type: ignore[arg-type]


def sequential_ids(count: int) -> list[int]:
    """Ids 1..count, for one-shot results that have no history to be stable against."""
    return list(np.arange(1, count + 1, dtype=int).tolist())
