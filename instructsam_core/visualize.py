"""Overlay pictures: coloured instance masks, boxes and "phrase score" labels on the image.

Shared by `instructsam predict`, the evaluation report and the ROS node's overlay topic, so a
person sees the same picture everywhere.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from instructsam_core.instances import Instance


def instance_color(index: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per index (golden-ratio hue steps)."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_overlay(
    image: np.ndarray,
    instances: list[Instance],
    alpha: float = 0.45,
    color_ids: list[int] | None = None,
) -> np.ndarray:
    """Return a new HxWx3 uint8 RGB picture; `color_ids` (e.g. tracked instance ids) pick colours."""
    canvas = image.astype(np.float32).copy()
    height, width = image.shape[:2]
    scale = max(0.35, min(height, width) / 640.0)
    thickness = max(1, int(round(2 * scale)))
    for k, instance in enumerate(instances):
        color = np.array(instance_color(color_ids[k] if color_ids else k), dtype=np.float32)
        mask = instance.mask
        canvas[mask] = canvas[mask] * (1.0 - alpha) + color * alpha
    out = canvas.clip(0, 255).astype(np.uint8)
    for k, instance in enumerate(instances):
        color = instance_color(color_ids[k] if color_ids else k)
        x0, y0, x1, y1 = (int(round(v)) for v in instance.box)
        if x1 <= x0 or y1 <= y0:
            continue
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), color, thickness)
        label = f"{instance.phrase} {instance.score:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
        ty = max(th + base, y0)
        cv2.rectangle(out, (x0, ty - th - base), (min(width - 1, x0 + tw + 2), ty), color, -1)
        cv2.putText(out, label, (x0 + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def save_png(path, image: np.ndarray) -> None:
    """Write an RGB array as PNG (OpenCV writes BGR)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
