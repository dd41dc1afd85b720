"""Several cameras on one node, without DDS: camera names, the fair batch scheduler, the launch
helpers and the camera parameters (the DDS behaviour is in test_ros_multicamera.py)."""
from __future__ import annotations

import threading
import time

import pytest

from instructsam_ros.segment_node.cameras import (
    MAX_CAMERAS,
    camera_list,
    camera_names_problem,
    camera_topic,
    image_remappings,
    parse_camera_argument,
    split_camera_parameter,
)
from instructsam_ros.segment_node.frame_slot import LatestSlots
from instructsam_ros.segment_node.parameters import CAMERA_PARAMETERS, camera_spec, validate


# ----------------------------------------------------------------------------- names
def test_one_camera_by_default_keeps_the_node_topic_names():
    assert camera_list([]) == [""]
    assert camera_topic("", "image") == "image" and camera_topic("", "segmentation") == "segmentation"
    assert camera_list(["front", "wrist"]) == ["front", "wrist"]
    assert camera_topic("front", "image/compressed") == "front/image/compressed"


@pytest.mark.parametrize(
    "names, words",
    [
        (["front", "front"], "lists 'front' twice"),
        (["front", "1st"], "'1st' is not a camera name"),
        (["arm/wrist"], "'arm/wrist' is not a camera name"),
        (["/front"], "is not a camera name"),
        (["front__left"], "no double underscore"),
        (["front cam"], "is not a camera name"),
        ([""], "must not be empty"),
        ([f"cam{i}" for i in range(MAX_CAMERAS + 1)], f"at most {MAX_CAMERAS} cameras, got {MAX_CAMERAS + 1}"),
        (["x" * 65], "longer than 64 characters"),
    ],
)
def test_bad_camera_lists_are_refused_with_a_reason(names, words):
    problem = camera_names_problem(names)
    assert problem is not None and words in problem
    reason = validate("cameras", names)
    assert reason is not None and reason.startswith("cameras ") and words in reason


def test_good_camera_lists_pass():
    for names in ([], ["front"], ["front", "wrist", "rear_left", "Cam2"], [f"c{i}" for i in range(MAX_CAMERAS)]):
        assert validate("cameras", names) is None, names


def test_camera_parameters_are_named_by_camera_and_validated():
    assert split_camera_parameter("wrist.max_frame_age") == ("wrist", "max_frame_age")
    assert split_camera_parameter("max_frame_age") is None and split_camera_parameter("1x.max_frame_age") is None
    entry = camera_spec("max_frame_age")
    assert entry in CAMERA_PARAMETERS
    for good in (-1.0, 0.0, 0.25, 3600.0):
        assert validate("wrist.max_frame_age", good, entry) is None
    assert "or -1.0 for the node's max_frame_age" in validate("wrist.max_frame_age", -0.5, entry)
    assert validate("wrist.max_frame_age", float("nan"), entry) == "wrist.max_frame_age must be a finite number, got nan"
    assert validate("wrist.max_frame_age", 2, entry) is None  # an integer is a float here too


def test_launch_arguments_parse_camera_lists_and_image_topics():
    for text in ("front,wrist", "front wrist", "[front, wrist]", "['front', 'wrist']", " [ front ,wrist ] "):
        assert parse_camera_argument(text) == ["front", "wrist"], text
    assert parse_camera_argument("") == [] and parse_camera_argument("[]") == []
    with pytest.raises(ValueError, match="cameras lists 'a' twice"):
        parse_camera_argument("a,a")
    # One camera: `image` remaps image and image/compressed, as the launch file always did.
    assert image_remappings([], "", "/cam/color") == [("image", "/cam/color"), ("image/compressed", "/cam/color/compressed")]
    assert image_remappings(["front", "wrist"], "", "image") == []
    assert image_remappings(["front", "wrist"], "/f/raw,/w/raw", "image") == [
        ("front/image", "/f/raw"), ("front/image/compressed", "/f/raw/compressed"),
        ("wrist/image", "/w/raw"), ("wrist/image/compressed", "/w/raw/compressed"),
    ]
    with pytest.raises(ValueError, match="images lists 1 topics for 2 cameras"):
        image_remappings(["front", "wrist"], "/f/raw", "image")


# ----------------------------------------------------------------------------- scheduling
def test_a_batch_holds_the_newest_frame_of_each_waiting_camera():
    slots: LatestSlots[str, int] = LatestSlots()
    assert slots.put("front", 1) is False
    assert slots.put("front", 2) is True  # replaced a frame never taken
    assert slots.put("wrist", 10) is False
    batch = slots.take_batch(4, timeout=0)
    assert sorted(batch) == [("front", 2), ("wrist", 10)]
    assert slots.take_batch(4, timeout=0.01) == []


def test_a_60_hz_camera_never_takes_the_place_of_a_5_hz_one():
    """One seat per batch (max_batch 1) and a model slower than the fast camera: the slow
    camera's frame goes first whenever it waits, so none of its frames is ever replaced."""
    slots: LatestSlots[str, float] = LatestSlots()
    taken = {"fast": 0, "slow": 0}
    put = {"fast": 0, "slow": 0}
    replaced = {"fast": 0, "slow": 0}
    model_s, t = 0.05, 0.0
    next_put = {"fast": 0.0, "slow": 0.0}
    period = {"fast": 1 / 60, "slow": 1 / 5}
    while t < 10.0:
        for cam in ("slow", "fast"):  # the fast camera's frame is always the newest
            while next_put[cam] <= t:
                put[cam] += 1
                replaced[cam] += slots.put(cam, next_put[cam])
                next_put[cam] += period[cam]
        for cam, _ in slots.take_batch(1, timeout=0):
            taken[cam] += 1
        t += model_s
    assert replaced["slow"] == 0 and taken["slow"] == put["slow"] == 50
    assert taken["fast"] == 200 - taken["slow"]  # every other batch went to the fast camera
    assert replaced["fast"] > 0.5 * put["fast"]


def test_when_more_cameras_wait_than_a_batch_takes_they_take_turns():
    slots: LatestSlots[str, int] = LatestSlots()
    cameras = ["a", "b", "c", "d", "e"]
    last_served = {cam: -1 for cam in cameras}
    for batch_number in range(40):
        for cam in cameras:  # every camera always has a new frame
            slots.put(cam, batch_number)
        batch = slots.take_batch(2, timeout=0)
        assert len(batch) == 2 and len({cam for cam, _ in batch}) == 2
        for cam, _ in batch:
            last_served[cam] = batch_number
        if batch_number >= 3:
            # ceil(5 / 2) = 3: no camera waits longer than three batches.
            assert min(last_served.values()) >= batch_number - 2, last_served
    # Equal shares over the run.
    slots.close()


def test_a_waiting_batch_take_wakes_on_a_frame_and_on_close():
    slots: LatestSlots[str, str] = LatestSlots()
    got = []
    worker = threading.Thread(target=lambda: got.append(slots.take_batch(4, timeout=30)))
    worker.start()
    time.sleep(0.05)
    slots.put("front", "frame")
    worker.join(timeout=5)
    assert got == [[("front", "frame")]]
    worker = threading.Thread(target=lambda: got.append(slots.take_batch(4, timeout=30)))
    worker.start()
    time.sleep(0.05)
    slots.close()
    worker.join(timeout=5)
    assert not worker.is_alive() and got[-1] == [] and slots.closed
    assert slots.put("front", "late") is False and slots.take_batch(1, timeout=0) == []


def test_a_removed_camera_loses_its_waiting_frame_and_clear_drops_all():
    slots: LatestSlots[str, int] = LatestSlots()
    slots.put("front", 1)
    slots.put("wrist", 2)
    assert slots.discard("wrist") is True and slots.discard("wrist") is False
    assert slots.pending() == ["front"]
    assert slots.clear() == {"front": 1} and slots.pending() == []
    with pytest.raises(ValueError):
        slots.take_batch(0)


# ----------------------------------------------------------------------------- stream construction
class _EndpointDouble:
    def __init__(self, topic: str) -> None:
        self.topic_name = "/" + topic

    def get_subscription_count(self) -> int:
        return 0


class _EagerNode:
    """A node whose subscriptions deliver a message while they are being created, as a
    multi-threaded executor may do before the creating constructor has returned."""

    def __init__(self) -> None:
        self.delivered: list[str] = []

    def create_subscription(self, msg_type, topic, callback, qos, callback_group=None, event_callbacks=None):
        from sensor_msgs.msg import CameraInfo
        from std_msgs.msg import String

        msg = msg_type()
        if msg_type is String:
            callback(msg, {"source_timestamp": 1, "publication_sequence_number": 1, "publisher_gid": None})
        elif msg_type is not CameraInfo:
            msg.header.stamp.sec = 5
            callback(msg)
        self.delivered.append(topic)
        return _EndpointDouble(topic)

    def create_lifecycle_publisher(self, msg_type, topic, qos):
        return _EndpointDouble(topic)

    def get_logger(self):
        import logging

        return logging.getLogger("eager-node")


@pytest.mark.parametrize("depth, compressed", [(True, False), (True, True), (False, False)])
def test_a_message_delivered_while_the_stream_is_built_reaches_a_complete_stream(depth, compressed):
    """CI once saw `'CameraStream' object has no attribute 'depth'`: an image arrived between
    the image subscription's creation and the depth attribute's assignment."""
    from instructsam_ros.segment_node.camera_stream import CameraStream
    from instructsam_ros.segment_node.diagnostics import StreamStats
    from instructsam_ros.segment_node.parameters import PARAMETERS
    from instructsam_ros.segment_node.segmenter import InstructionState

    settings = {entry.name: entry.default for entry in PARAMETERS}
    settings.update(depth=depth, use_compressed=compressed)
    node, frames, texts = _EagerNode(), [], []
    stream = CameraStream(node, "front", settings, lambda s, frame: frames.append((s, frame)), StreamStats(),
                          InstructionState(), lambda s, text: texts.append(text), None, None, 0.3)
    image_topic = "front/image/compressed" if compressed else "front/image"
    assert image_topic in node.delivered and "front/instruction" in node.delivered
    assert len(frames) == 1 and frames[0][0] is stream and frames[0][1].msg.header.stamp.sec == 5
    assert len(texts) == 1  # the instruction callback ran on a complete stream too
    assert stream.image_topic == "/" + image_topic
    if depth:
        assert ("front/depth/image/compressedDepth" if compressed else "front/depth/image") in node.delivered
        assert stream.depth is not None and frames[0][1].depth_held is not None
    else:
        assert stream.depth is None and frames[0][1].depth_held is None
