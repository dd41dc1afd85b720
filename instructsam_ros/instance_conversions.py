"""Predictions <-> instructsam_ros messages, and the mono16 label image.

Masks travel cropped to their tight box as lossless mono8 (255 = instance), so a small
object costs bytes in proportion to its box, not to the frame, and holes and multi-part
objects survive (unlike outline polygons). The label image resolves overlaps by score
(the higher-scoring instance owns a shared pixel) instead of summing ids.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sensor_msgs.msg import RegionOfInterest
from std_msgs.msg import Header

from instructsam_core.instances import Instance, Prediction
from instructsam_ros.image_conversions import array_to_image_msg, image_msg_to_array
from instructsam_ros.interfaces import Instance as InstanceMsg
from instructsam_ros.interfaces import InstanceSegmentation

MASK_ON = 255
MAX_LABEL_ID = 65535  # mono16


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the mask's pixels, x1/y1 exclusive; zeros for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def instance_to_msg(
    instance: Instance, instance_id: int, header: Header, box: tuple[int, int, int, int] | None = None
) -> InstanceMsg:
    """One instance as a message, mask cropped to its box.

    `box` is the mask's tight integer box when the caller has it (the predictor's contract);
    otherwise it is computed from the mask.
    """
    mask = np.asarray(instance.mask, dtype=bool)
    x0, y0, x1, y1 = tight_box(mask) if box is None else box
    crop = np.multiply(mask[y0:y1, x0:x1], MASK_ON, dtype=np.uint8)
    msg = InstanceMsg()
    msg.id = int(instance_id)
    msg.phrase = instance.phrase
    msg.phrase_index = int(instance.phrase_index)
    msg.score = float(instance.score)
    msg.box = RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0, height=y1 - y0, do_rectify=False)
    msg.mask = array_to_image_msg(crop, "mono8", header)
    msg.area = int(np.count_nonzero(crop))
    return msg


def msg_to_mask(msg: InstanceMsg, height: int, width: int) -> np.ndarray:
    """Full-frame boolean mask of an instance message (the inverse of `instance_to_msg`)."""
    full = np.zeros((height, width), dtype=bool)
    if msg.box.width == 0 or msg.box.height == 0:
        return full
    crop = image_msg_to_array(msg.mask)
    if crop.shape != (msg.box.height, msg.box.width):
        raise ValueError(f"mask is {crop.shape[1]}x{crop.shape[0]} but its box is {msg.box.width}x{msg.box.height}")
    y0, x0 = msg.box.y_offset, msg.box.x_offset
    full[y0:y0 + msg.box.height, x0:x0 + msg.box.width] = crop > 0
    return full


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


def prediction_to_msg(
    prediction: Prediction,
    ids: Sequence[int],
    header: Header,
    instruction_id: int,
    model_latency: float,
    processing_latency: float = 0.0,
    boxes: Sequence[tuple[int, int, int, int]] | None = None,
    instruction: str | None = None,
) -> InstanceSegmentation:
    """The `InstanceSegmentation` for one frame; `header` is the input image's, copied as is."""
    if len(prediction.instances) != len(ids):
        raise ValueError(f"{len(prediction.instances)} instances but {len(ids)} ids")
    msg = InstanceSegmentation()
    msg.header = header
    msg.height, msg.width = (int(v) for v in prediction.image_size)
    msg.instruction = prediction.instruction if instruction is None else instruction
    msg.instruction_id = int(instruction_id)
    msg.phrases = list(prediction.phrases)
    if boxes is None:
        boxes = [None] * len(ids)  # type: ignore[list-item]
    msg.instances = [instance_to_msg(inst, i, header, b) for inst, i, b in zip(prediction.instances, ids, boxes)]
    msg.model_latency = float(model_latency)
    msg.processing_latency = float(processing_latency)
    return msg
