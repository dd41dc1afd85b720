"""How instance masks are laid out in our messages: cropped to their box, and the label image.

Pure numpy, no ROS imports: the live node (through `messages.instances`, rclpy messages) and
`instructsam annotate-bag` (rosbags messages, no ROS installation) share these rules, so a
recorded annotation and a live one are pixel for pixel the same.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from instructsam_core.instances import Instance

MASK_ON = 255
MAX_LABEL_ID = 65535  # mono16


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the mask's pixels, x1/y1 exclusive; zeros for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def int_box(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """A (x0, y0, x1, y1) box as integer pixels clipped to the frame; zeros when nothing is left."""
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    if x1 <= x0 or y1 <= y0:
        return (0, 0, 0, 0)
    return (x0, y0, x1, y1)


def crop_mask(mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The mono8 crop of a full-frame bool mask to `box` (255 = instance, 0 = not)."""
    x0, y0, x1, y1 = box
    return np.multiply(np.asarray(mask, dtype=bool)[y0:y1, x0:x1], MASK_ON, dtype=np.uint8)


def label_image(
    instances: Sequence[Instance],
    ids: Sequence[int],
    height: int,
    width: int,
    boxes: Sequence[tuple[int, int, int, int]] | None = None,
) -> np.ndarray:
    """uint16 HxW: 0 = background, otherwise the id of the highest-scoring instance there.

    With the masks' tight `boxes`, only the boxes are visited (cheap for small objects).
    """
    if len(instances) != len(ids) or (boxes is not None and len(boxes) != len(ids)):
        raise ValueError(f"{len(instances)} instances, {len(ids)} ids, {len(boxes or [])} boxes")
    labels = np.zeros((height, width), dtype=np.uint16)
    # Paint from the lowest score up so that the highest score ends on top.
    for index in sorted(range(len(instances)), key=lambda i: instances[i].score):
        instance_id = ids[index]
        if not 0 < instance_id <= MAX_LABEL_ID:
            raise ValueError(f"instance id {instance_id} does not fit a mono16 label image")
        mask = np.asarray(instances[index].mask, dtype=bool)
        x0, y0, x1, y1 = boxes[index] if boxes is not None else (0, 0, width, height)
        window = labels[y0:y1, x0:x1]
        window[mask[y0:y1, x0:x1]] = instance_id
    return labels
