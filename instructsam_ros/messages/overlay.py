"""The overlay image for rviz and the demo: instances drawn on the exact input frame.

Drawn from the label image, so overlapping instances show the same winner as `label_image`,
and each id keeps its colour from frame to frame (the colour is a function of the id). With
depth, each label ends with the instance's distance from the camera ("0.82 m", to its 3-D
centre); an instance without a 3-D position gets no distance, never a guessed one.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from instructsam_core.instances import Instance


def _build_palette(size: int = 65536) -> np.ndarray:
    """Distinct, saturated colours per id (golden-ratio hue steps); id 0 is black."""
    ids = np.arange(size, dtype=np.float64)
    hue = (ids * 0.618033988749895) % 1.0
    hsv = np.stack([hue * 179.0, np.full(size, 220.0), np.full(size, 255.0)], axis=1).astype(np.uint8)
    rgb = cv2.cvtColor(hsv.reshape(1, size, 3), cv2.COLOR_HSV2RGB).reshape(size, 3)
    rgb[0] = 0
    return rgb


PALETTE = _build_palette()


def color_of(instance_id: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in PALETTE[instance_id])  # type: ignore[return-value]


def draw_overlay(
    rgb: np.ndarray,
    labels: np.ndarray,
    instances: Sequence[Instance],
    ids: Sequence[int],
    boxes: Sequence[tuple[int, int, int, int]],
    alpha: float = 0.5,
    distances: Sequence[float | None] | None = None,
) -> np.ndarray:
    """A new HxWx3 uint8 image: masks blended in their id's colour, boxes and labels on top
    (`distances`: metres per instance, None where it has no 3-D position)."""
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"label image {labels.shape} does not match frame {rgb.shape[:2]}")
    out = rgb.copy()
    inside = labels > 0
    if inside.any():
        tint = PALETTE[labels[inside]].astype(np.float32)
        out[inside] = (out[inside].astype(np.float32) * (1.0 - alpha) + tint * alpha).round().astype(np.uint8)
    scale = max(0.35, min(out.shape[0], out.shape[1]) / 900.0)
    if distances is None:
        distances = [None] * len(ids)
    for instance, instance_id, (x0, y0, x1, y1), distance in zip(instances, ids, boxes, distances):
        if x1 <= x0 or y1 <= y0:
            continue
        color = color_of(instance_id)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), color, 1)
        text = f"{instance_id} {instance.phrase} {instance.score:.2f}"
        if distance is not None:
            text += f" {distance:.2f} m"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y0 - 3 if y0 - th - base - 3 >= 0 else min(y0 + th + 3, out.shape[0] - 1)
        cv2.rectangle(out, (x0, ty - th - 2), (x0 + tw + 2, ty + base - 1), color, -1)
        cv2.putText(out, text, (x0 + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
