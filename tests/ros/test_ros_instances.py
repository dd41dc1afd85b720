"""Instances <-> messages, the label image, the overlay and stable ids, on hand-built masks."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from instructsam_core.instances import Instance, Prediction, mask_to_box
from instructsam_ros.segment_node.frame_slot import LatestSlot
from instructsam_ros.messages.images import image_msg_to_array
from instructsam_ros.messages.instances import (
    instance_to_msg,
    label_image,
    msg_to_mask,
    prediction_to_msg,
    tight_box,
)
from instructsam_ros.messages.overlay import PALETTE, draw_overlay
from instructsam_ros.messages.tracking import MAX_ID, InstanceTracker, box_iou


def make_instance(mask: np.ndarray, score: float, phrase: str = "cup") -> Instance:
    return Instance(phrase, score, mask, mask_to_box(mask))


def header(sec: int = 12, nanosec: int = 345, frame: str = "cam") -> Header:
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame)


def ring_mask() -> np.ndarray:
    """6x8 frame; a 3x4 block at rows 1..3, cols 3..6 with a hole at (2, 4)."""
    mask = np.zeros((6, 8), bool)
    mask[1:4, 3:7] = True
    mask[2, 4] = False
    return mask


def test_mask_is_cropped_to_its_box_losslessly():
    msg = instance_to_msg(make_instance(ring_mask(), 0.8), 7, header())
    assert (msg.box.x_offset, msg.box.y_offset, msg.box.width, msg.box.height) == (3, 1, 4, 3)
    assert (msg.mask.width, msg.mask.height, msg.mask.encoding) == (4, 3, "mono8")
    expected = np.array([[255, 255, 255, 255], [255, 0, 255, 255], [255, 255, 255, 255]], np.uint8)
    np.testing.assert_array_equal(image_msg_to_array(msg.mask), expected)
    assert msg.area == 11 and msg.id == 7 and msg.phrase == "cup"
    assert msg.mask.header.stamp.sec == 12 and msg.mask.header.frame_id == "cam"


def test_full_mask_round_trips_through_the_message():
    mask = ring_mask()
    np.testing.assert_array_equal(msg_to_mask(instance_to_msg(make_instance(mask, 0.5), 1, header()), 6, 8), mask)


def test_empty_mask_has_an_empty_box():
    msg = instance_to_msg(make_instance(np.zeros((4, 5), bool), 0.4), 2, header())
    assert (msg.box.width, msg.box.height, msg.area, msg.mask.width, msg.mask.height) == (0, 0, 0, 0, 0)
    assert not msg_to_mask(msg, 4, 5).any()


def test_tight_box_is_exclusive_at_the_far_edges():
    assert tight_box(ring_mask()) == (3, 1, 7, 4)
    assert tight_box(np.zeros((3, 3), bool)) == (0, 0, 0, 0)


def test_label_image_gives_shared_pixels_to_the_higher_score():
    a = np.zeros((3, 4), bool)
    a[0:2, 0:3] = True
    b = np.zeros((3, 4), bool)
    b[1:3, 2:4] = True
    # b scores higher: it owns the overlap pixel (1, 2) whatever the list order.
    for instances, ids in ([make_instance(a, 0.6), make_instance(b, 0.9)], [5, 9]), (
        [make_instance(b, 0.9), make_instance(a, 0.6)], [9, 5]
    ):
        labels = label_image(instances, ids, 3, 4)
        expected = np.array([[5, 5, 5, 0], [5, 5, 9, 9], [0, 0, 9, 9]], np.uint16)
        np.testing.assert_array_equal(labels, expected)
        assert labels.dtype == np.uint16


def test_label_image_from_boxes_equals_the_full_frame_one():
    rng = np.random.default_rng(0)
    instances = []
    for k in range(5):
        mask = np.zeros((40, 50), bool)
        y, x = int(rng.integers(0, 30)), int(rng.integers(0, 40))
        mask[y : y + 10, x : x + 10] = rng.random((10, 10)) > 0.3
        instances.append(make_instance(mask, float(rng.random())))
    ids = [3, 1, 4, 15, 9]
    boxes = [tight_box(i.mask) for i in instances]
    np.testing.assert_array_equal(label_image(instances, ids, 40, 50, boxes), label_image(instances, ids, 40, 50))


@pytest.mark.parametrize("bad_id", [0, MAX_ID + 1])
def test_label_image_refuses_ids_outside_mono16(bad_id):
    with pytest.raises(ValueError):
        label_image([make_instance(ring_mask(), 0.5)], [bad_id], 6, 8)


def test_prediction_message_copies_the_header_and_echoes_the_instruction():
    instances = [make_instance(ring_mask(), 0.9), make_instance(np.eye(6, 8, dtype=bool), 0.4, "plate")]
    prediction = Prediction("find cups", ["cup", "plate"], instances, (6, 8))
    msg = prediction_to_msg(prediction, [4, 11], header(99, 1, "optical"), 3, 0.25, 0.5, instruction="Find cups")
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (99, 1, "optical")
    assert (msg.height, msg.width, msg.instruction, msg.instruction_id) == (6, 8, "Find cups", 3)
    assert list(msg.phrases) == ["cup", "plate"]
    assert [i.id for i in msg.instances] == [4, 11] and [i.phrase for i in msg.instances] == ["cup", "plate"]
    assert msg.instances[1].area == 6 and (msg.model_latency, msg.processing_latency) == (0.25, 0.5)


def test_overlay_tints_masks_and_leaves_the_rest_of_the_frame_alone():
    frame = np.full((60, 80, 3), 100, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[30:50, 20:40] = True
    instance = make_instance(mask, 0.77)
    labels = label_image([instance], [3], 60, 80)
    out = draw_overlay(frame, labels, [instance], [3], [tight_box(mask)], alpha=0.5)
    assert out is not frame and (frame == 100).all()  # the input is never drawn on
    expected = np.round(100 * 0.5 + PALETTE[3].astype(np.float64) * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[40, 30], expected)  # inside the mask, away from the outline
    # The label sits just above the box (rows ~17..29); elsewhere outside the box nothing changes.
    np.testing.assert_array_equal(out[0:15, :], frame[0:15, :])
    np.testing.assert_array_equal(out[32:60, 45:80], frame[32:60, 45:80])
    np.testing.assert_array_equal(out[52:60, :], frame[52:60, :])


def test_box_iou_by_hand():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_tracker_keeps_ids_of_moving_objects_in_any_order():
    tracker = InstanceTracker(iou_threshold=0.3)
    assert tracker.assign(["cup", "cup"], [(0, 0, 10, 10), (50, 50, 60, 60)]) == [1, 2]
    # Next frame: both moved by one pixel and come in the other order; a third cup appears.
    ids = tracker.assign(["cup", "cup", "cup"], [(51, 51, 61, 61), (100, 0, 110, 10), (1, 1, 11, 11)])
    assert ids == [2, 3, 1]


def test_tracker_does_not_match_across_phrases():
    tracker = InstanceTracker()
    tracker.assign(["cup"], [(0, 0, 10, 10)])
    assert tracker.assign(["plate"], [(0, 0, 10, 10)]) == [2]


def test_tracker_survives_missed_frames_then_forgets():
    tracker = InstanceTracker(max_missed_frames=2)
    tracker.assign(["cup"], [(0, 0, 10, 10)])
    tracker.assign([], [])
    tracker.assign([], [])
    assert tracker.assign(["cup"], [(0, 0, 10, 10)]) == [1]  # missed 2 frames: still known
    for _ in range(3):
        tracker.assign([], [])
    assert tracker.assign(["cup"], [(0, 0, 10, 10)]) == [2]  # missed 3: a new track


def test_tracker_ids_wrap_and_skip_live_ones():
    tracker = InstanceTracker()
    tracker.assign(["a"], [(0, 0, 1, 1)])  # id 1 stays live
    tracker._next_id = MAX_ID
    assert tracker.assign(["a", "b", "c"], [(0, 0, 1, 1), (5, 5, 6, 6), (9, 9, 10, 10)]) == [1, MAX_ID, 2]


def test_latest_slot_keeps_only_the_newest_item():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.replaced == 2
    assert slot.take(timeout=0) == 3
    assert slot.take(timeout=0) is None


def test_latest_slot_wakes_a_waiting_taker_and_closes():
    slot: LatestSlot[str] = LatestSlot()
    got = []
    taker = threading.Thread(target=lambda: got.append(slot.take(timeout=30)))
    taker.start()
    slot.put("frame")
    taker.join(timeout=30)
    assert got == ["frame"]
    closer = threading.Thread(target=lambda: got.append(slot.take(timeout=30)))
    closer.start()
    slot.close()
    closer.join(timeout=30)
    assert got == ["frame", None] and slot.take() is None
