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
from instructsam_ros.messages.images import array_to_image_msg, image_msg_to_array
from instructsam_ros.interfaces import Instance as InstanceMsg
from instructsam_ros.interfaces import InstanceSegmentation
# The ROS-free layout rules live in mask_layout (shared with annotate-bag); re-exported here.
from instructsam_ros.messages.mask_layout import MASK_ON, MAX_LABEL_ID, crop_mask, label_image, tight_box  # noqa: F401


def instance_to_msg(
    instance: Instance, instance_id: int, header: Header, box: tuple[int, int, int, int] | None = None
) -> InstanceMsg:
    """One instance as a message, mask cropped to its box.

    `box` is the mask's tight integer box when the caller has it (the predictor's contract);
    otherwise it is computed from the mask.
    """
    mask = np.asarray(instance.mask, dtype=bool)
    x0, y0, x1, y1 = tight_box(mask) if box is None else box
    crop = crop_mask(mask, (x0, y0, x1, y1))
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
