"""segment_node in its own process, streaming over real DDS (one node process for the module).

Sharing the process is honest here: every test sends frames with unique stamps and checks
the result for exactly that frame, and each test sets the instruction it relies on.
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from instructsam_ros.messages.images import image_msg_to_array
from instructsam_ros.messages.instances import msg_to_mask
from instructsam_ros.srv import Segment
from rosprobe import Probe, stamp_ns, test_scene, wait_for

NS = "/stream_test"


@pytest.fixture(scope="module")
def node(start_node, tiny_model_dir):
    process = start_node(NS, {
        "model": str(tiny_model_dir), "device": "cpu", "threshold": 0.0, "max_frame_age": 5.0,
        "diagnostics_period": 0.2, "warmup": False,
    })
    yield process
    alive = process.alive()
    process.stop()
    assert alive, "the node died during the module:\n" + process.log()[-4000:]


@pytest.fixture(scope="module")
def probe(node, harness):
    p = Probe(harness, NS)
    p.instruct("red circle")
    p.wait_connected(timeout=90)
    yield p
    p.close()


def check_result_geometry(result, height: int, width: int) -> None:
    """Boxes inside the frame, masks sized as their boxes, areas equal to the mask pixels."""
    assert (result.height, result.width) == (height, width)
    assert result.instances, "threshold 0 should return every query"
    for inst in result.instances:
        box = inst.box
        assert box.x_offset + box.width <= width and box.y_offset + box.height <= height
        assert (inst.mask.width, inst.mask.height, inst.mask.encoding) == (box.width, box.height, "mono8")
        crop = image_msg_to_array(inst.mask) if box.width else np.zeros((0, 0), np.uint8)
        assert set(np.unique(crop).tolist()) <= {0, 255}
        assert int((crop == 255).sum()) == inst.area
        if box.width:  # the box is tight: every border row and column of the crop holds a pixel
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()


def test_results_carry_the_input_header_and_the_instruction(probe):
    first = probe.wait_instruction("red circle", test_scene(96, 160))
    msg = probe.frame(test_scene(96, 160, seed=1), frame_id="front_camera_optical")
    result = probe.request(msg)
    assert stamp_ns(result.header.stamp) == stamp_ns(msg.header.stamp)
    assert result.header.frame_id == "front_camera_optical"
    assert result.instruction == "red circle" and result.instruction_id == first.instruction_id >= 1
    assert list(result.phrases) == ["red circle"]
    for inst in result.instances:
        assert stamp_ns(inst.mask.header.stamp) == stamp_ns(msg.header.stamp)
    label = wait_for(lambda: probe.image_for(probe.labels, msg.header.stamp), 20, "label_image")
    overlay = wait_for(lambda: probe.image_for(probe.overlays, msg.header.stamp), 20, "overlay")
    for image, encoding in ((label, "mono16"), (overlay, "rgb8")):
        assert image.header.frame_id == "front_camera_optical"
        assert (image.encoding, image.height, image.width) == (encoding, 96, 160)



def test_without_the_depth_parameter_there_is_no_depth_input_and_no_3d(probe, harness):
    """depth is false by default: no depth topics, no point cloud, every result DEPTH_DISABLED."""
    result = probe.wait_instruction("red circle", test_scene(48, 64))
    assert result.depth_status == result.DEPTH_DISABLED and result.depth_latency == 0.0
    assert all(inst.location.status == inst.location.NO_DEPTH for inst in result.instances)
    graph = harness.node
    for topic in ("depth/image", "depth/camera_info", "depth/image/compressedDepth"):
        assert graph.count_subscribers(f"{NS}/{topic}") == 0, topic
    assert graph.count_publishers(f"{NS}/instance_points") == 0
    assert not any(key.startswith("3d_") for key in probe.latest_diagnostics())

def _encode(rgb: np.ndarray, encoding: str, probe: Probe) -> Image:
    if encoding == "rgb8":
        return probe.frame(rgb, "rgb8")
    if encoding == "bgr8":
        return probe.frame(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8")
    if encoding == "mono8":
        return probe.frame(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), "mono8")
    # yuv422 (UYVY) packed by hand: BT.601 video range, chroma averaged over pixel pairs.
    f = rgb.astype(np.float64)
    y = 16 + 0.257 * f[..., 0] + 0.504 * f[..., 1] + 0.098 * f[..., 2]
    u = 128 - 0.148 * f[..., 0] - 0.291 * f[..., 1] + 0.439 * f[..., 2]
    v = 128 + 0.439 * f[..., 0] - 0.368 * f[..., 1] - 0.071 * f[..., 2]
    packed = np.empty((rgb.shape[0], rgb.shape[1] * 2), np.float64)
    packed[:, 0::4] = (u[:, 0::2] + u[:, 1::2]) / 2
    packed[:, 1::4] = y[:, 0::2]
    packed[:, 2::4] = (v[:, 0::2] + v[:, 1::2]) / 2
    packed[:, 3::4] = y[:, 1::2]
    msg = probe.frame(np.clip(np.rint(packed), 0, 255).astype(np.uint8), "mono8")
    msg.encoding, msg.width, msg.step = "yuv422", rgb.shape[1], rgb.shape[1] * 2
    return msg


@pytest.mark.parametrize(
    "encoding, height, width",
    [("rgb8", 96, 160), ("bgr8", 160, 96), ("mono8", 50, 130), ("yuv422", 72, 64)],
)
def test_masks_and_boxes_are_at_input_resolution(probe, encoding, height, width):
    probe.wait_instruction("red circle", test_scene(32, 32))
    msg = _encode(test_scene(height, width, seed=2), encoding, probe)
    result = probe.request(msg)
    check_result_geometry(result, height, width)
    label = image_msg_to_array(wait_for(lambda: probe.image_for(probe.labels, msg.header.stamp), 20, "label_image"))
    assert label.shape == (height, width)
    union = np.zeros((height, width), bool)
    for inst in result.instances:
        mask = msg_to_mask(inst, height, width)
        union |= mask
        assert not (label == inst.id)[~mask].any(), "a label pixel lies outside its instance's mask"
    np.testing.assert_array_equal(label > 0, union)


def test_rgb8_and_bgr8_of_one_frame_give_the_same_instances(probe):
    probe.wait_instruction("red circle", test_scene(32, 32))
    rgb = test_scene(80, 120, seed=3)
    a = probe.request(_encode(rgb, "rgb8", probe))
    b = probe.request(_encode(rgb, "bgr8", probe))
    assert [i.score for i in a.instances] == [i.score for i in b.instances]
    for x, y in zip(a.instances, b.instances):
        np.testing.assert_array_equal(msg_to_mask(x, 80, 120), msg_to_mask(y, 80, 120))


def test_8uc3_and_8uc1_frames_are_read_as_bgr8_and_mono8(probe):
    """The node reads the generic types as cv_bridge does; read as rgb8 the same bytes answer otherwise."""
    probe.wait_instruction("red circle", test_scene(32, 32))
    rgb = test_scene(80, 120, seed=6)

    def answer(pixels: np.ndarray, encoding: str, sent_as: str):
        msg = probe.frame(pixels, encoding)
        msg.encoding = sent_as
        result = probe.request(msg)
        return [i.score for i in result.instances], [msg_to_mask(i, 80, 120) for i in result.instances]

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    as_bgr8, as_8uc3, as_rgb8 = (answer(bgr, "bgr8", "bgr8"), answer(bgr, "bgr8", "8UC3"), answer(bgr, "rgb8", "rgb8"))
    as_mono8, as_8uc1 = answer(grey, "mono8", "mono8"), answer(grey, "mono8", "8UC1")
    for reference, generic in ((as_bgr8, as_8uc3), (as_mono8, as_8uc1)):
        assert reference[0] == generic[0] and len(reference[1]) == len(generic[1]) > 0
        for x, y in zip(reference[1], generic[1]):
            np.testing.assert_array_equal(x, y)
    assert as_rgb8[0] != as_8uc3[0]  # the test can tell BGR from RGB on this frame


def test_a_new_instruction_applies_to_the_next_frames(probe):
    before = probe.wait_instruction("red circle", test_scene(40, 40))
    probe.instruct("blue squares")
    after = probe.wait_instruction("blue squares", test_scene(40, 40))
    assert after.instruction_id == before.instruction_id + 1 and list(after.phrases) == ["blue squares"]
    # Once a frame was answered under the new instruction, later frames never use the old one.
    for seed in range(3):
        assert probe.request(probe.frame(test_scene(40, 40, seed))).instruction == "blue squares"
    # The parameter is another way in.
    assert probe.set_parameter("instruction", "green rings").successful
    by_param = probe.wait_instruction("green rings", test_scene(40, 40))
    assert by_param.instruction_id == after.instruction_id + 1
    probe.instruct("red circle")
    probe.wait_instruction("red circle", test_scene(40, 40))


def test_parameters_are_validated_when_set(probe):
    refused = probe.set_parameter("threshold", 1.5)
    assert not refused.successful and "threshold must be in [0.0, 1.0]" in refused.reason
    refused = probe.set_parameter("device", "gpu")
    assert not refused.successful and "device" in refused.reason
    assert probe.set_parameter("max_instances", 3).successful
    try:
        msg = probe.frame(test_scene(64, 64, seed=4))
        assert len(probe.request(msg).instances) == 3
    finally:
        assert probe.set_parameter("max_instances", 100).successful


def test_segment_service(probe, harness):
    client = harness.node.create_client(Segment, f"{NS}/segment")
    try:
        image = probe.frame(test_scene(70, 110, seed=5), frame_id="hand_camera")
        response = harness.call(client, Segment.Request(image=image, instruction="a ring", phrases=["ring", "red square"]))
        assert response.success, response.message
        seg = response.segmentation
        assert list(seg.phrases) == ["ring", "red square"] and seg.instruction == "a ring"
        assert seg.instruction_id == 0  # not the stream's instruction
        assert seg.header.frame_id == "hand_camera" and stamp_ns(seg.header.stamp) == stamp_ns(image.header.stamp)
        assert [i.id for i in seg.instances] == list(range(1, 21))
        check_result_geometry(seg, 70, 110)
        # Empty instruction: the node's current one.
        stream_id = probe.wait_instruction("red circle", test_scene(32, 32)).instruction_id
        current = harness.call(client, Segment.Request(image=image))
        assert current.success and current.segmentation.instruction == "red circle"
        assert current.segmentation.instruction_id == stream_id
        # A bad image is refused with a reason; the node carries on.
        bad = probe.frame(test_scene(8, 8))
        bad.encoding = "32FC1"
        refused = harness.call(client, Segment.Request(image=bad, instruction="ring"))
        assert not refused.success and "unsupported encoding" in refused.message
        # An empty image with set_as_current only sets the stream's instruction.
        assert harness.call(client, Segment.Request(instruction="yellow triangles", set_as_current=True)).success
        probe.wait_instruction("yellow triangles", test_scene(32, 32))
    finally:
        harness.node.destroy_client(client)
        probe.instruct("red circle")


def test_a_burst_is_absorbed_by_dropping_not_by_queueing(probe):
    probe.wait_instruction("red circle", test_scene(32, 32))
    dropped_before = probe.counter("dropped_replaced_by_newer")
    received_before = probe.counter("frames_received")
    pixels = test_scene(120, 160, seed=6)
    frames = [probe.frame(pixels) for _ in range(40)]
    for msg in frames:
        probe.image_pub.publish(msg)
    last = wait_for(lambda: probe.result_for(frames[-1].header.stamp), 60, "the result for the last frame of the burst")
    sent = {stamp_ns(f.header.stamp) for f in frames}
    answered = [stamp_ns(r.header.stamp) for r in list(probe.results) if stamp_ns(r.header.stamp) in sent]
    assert answered == sorted(answered), "an older frame was processed after a newer one"
    assert len(answered) < len(frames) and last is not None
    time.sleep(0.5)
    dropped = probe.counter("dropped_replaced_by_newer") - dropped_before
    received = probe.counter("frames_received") - received_before
    # Frames are lost either in DDS (depth-1 best-effort reader) or replaced in the node's
    # one-slot buffer; every frame the node received was processed or counted as replaced.
    assert received <= len(frames) and received - dropped == len(answered)


def test_best_effort_and_reliable_cameras_both_connect(probe, harness):
    probe.wait_instruction("red circle", test_scene(32, 32))
    reliable = harness.node.create_publisher(Image, f"{NS}/image", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    try:
        probe.wait_connected(reliable)
        a = probe.request(probe.frame(test_scene(48, 64), frame_id="best_effort_cam"))
        b = probe.request(probe.frame(test_scene(48, 64), frame_id="reliable_cam"), publisher=reliable)
        assert (a.header.frame_id, b.header.frame_id) == ("best_effort_cam", "reliable_cam")
    finally:
        harness.node.destroy_publisher(reliable)


def _bad_frames(probe: Probe) -> list[tuple[str, Image]]:
    good = test_scene(40, 60)
    frames = []
    msg = probe.frame(good)
    msg.encoding = "32FC1"
    frames.append(("unsupported encoding", msg))
    msg = probe.frame(good)
    msg.encoding = "no_such_encoding"
    frames.append(("unknown encoding", msg))
    msg = probe.frame(good)
    msg.data = msg.data[:-7]
    frames.append(("short data", msg))
    msg = probe.frame(good)
    msg.step = 10
    frames.append(("step shorter than a row", msg))
    msg = probe.frame(good)
    msg.height, msg.width, msg.step, msg.data = 0, 0, 0, msg.data[:0]
    frames.append(("zero size", msg))
    msg = probe.frame(np.zeros((100, 120, 3), np.uint8))
    frames.append(("over max_input_pixels", msg))
    return frames


def test_bad_input_is_dropped_counted_and_the_node_carries_on(probe, node):
    probe.wait_instruction("red circle", test_scene(32, 32))
    assert probe.set_parameter("max_input_pixels", 10_000).successful
    try:
        for name, msg in _bad_frames(probe):
            before = probe.counter("dropped_bad_input")
            probe.image_pub.publish(msg)
            wait_for(lambda: int(probe.latest_diagnostics()["dropped_bad_input"]) > before, 30, f"the {name} frame to be counted")
            assert probe.result_for(msg.header.stamp) is None
            assert node.alive()
    finally:
        assert probe.set_parameter("max_input_pixels", 4096 * 4096).successful
    assert "max_input_pixels" in probe.latest_diagnostics()["last_problem"]
    # A frame stamped 30 s ago is too old (max_frame_age 5 s).
    before = probe.counter("dropped_too_old")
    old = probe.frame(test_scene(40, 40))
    old.header.stamp.sec -= 30
    probe.image_pub.publish(old)
    wait_for(lambda: int(probe.latest_diagnostics()["dropped_too_old"]) > before, 30, "the old frame to be counted")
    # Empty and over-long instructions are refused (the warning is rate-limited per kind of
    # problem, the diagnostics name the latest); the current instruction stays.
    probe.instruct("   ")
    wait_for(lambda: "empty instruction ignored" in probe.latest_diagnostics()["last_problem"], 30, "the empty instruction to be refused")
    probe.instruct("x" * 2001)
    wait_for(lambda: "2001 characters" in probe.latest_diagnostics()["last_problem"], 30, "the long instruction to be refused")
    after = probe.request(probe.frame(test_scene(40, 40)))
    assert after.instruction == "red circle"
    assert "instruction topic: empty instruction ignored" in node.log()
    assert node.alive()
