"""segment_node against inputs that used to be mishandled (issue 15), in its own process over DDS.

One node process for the module, started after a transient-local publisher latched its first
instruction. Tests find their results by unique stamps and set the instruction they rely on.
"""
from __future__ import annotations

import time

import pytest
from rclpy.qos import QoSProfile
from std_msgs.msg import String

from instructsam_ros.srv import Segment
from rosprobe import Probe, stamp_ns, test_scene, unique_stamp, wait_for

NS = "/hardening_test"
MAX_FRAME_AGE = 1.0  # while the stale-frame test runs; 5 s otherwise (a resent frame stays young)


@pytest.fixture(scope="module")
def setup(start_node, tiny_model_dir, harness):
    probe = Probe(harness, NS)
    probe.instruct("red circle")  # latched before the node exists
    time.sleep(0.2)
    node = start_node(NS, {
        "model": str(tiny_model_dir), "device": "cpu", "threshold": 0.0, "max_frame_age": 5.0,
        "max_instances": 5, "diagnostics_period": 0.2, "warmup": False,
    })
    probe.wait_connected(timeout=90)
    yield probe, node
    alive = node.alive()
    node.stop()
    probe.close()
    assert alive, "the node died during the module:\n" + node.log()[-4000:]


@pytest.fixture
def segment_client(harness):
    client = harness.node.create_client(Segment, f"{NS}/segment")
    yield client
    harness.node.destroy_client(client)


def test_instructions_arrive_from_latched_and_from_default_qos_publishers(setup, harness):
    probe, node = setup
    # The transient-local publisher was started before the node: its latched instruction came.
    first = probe.wait_instruction("red circle", test_scene(32, 32))
    assert first.instruction_id == 1
    # A publisher with ROS's default QoS (reliable, volatile), as `ros2 topic pub` uses.
    volatile = harness.node.create_publisher(String, f"{NS}/instruction", QoSProfile(depth=10))
    try:
        wait_for(lambda: volatile.get_subscription_count() > 0, 30, "the node matching a volatile instruction publisher")
        volatile.publish(String(data="blue squares"))
        assert probe.wait_instruction("blue squares", test_scene(32, 32)).instruction_id == 2
    finally:
        harness.node.destroy_publisher(volatile)
    # A live message from the transient-local publisher reaches both subscriptions: applied once.
    probe.instruct("red circle")
    assert probe.wait_instruction("red circle", test_scene(32, 32)).instruction_id == 3
    time.sleep(0.5)
    assert probe.request(probe.frame(test_scene(32, 32))).instruction_id == 3
    assert node.log().count("from instruction topic: 'red circle'") == 2


def test_the_segment_service_has_the_phrase_and_instruction_limits(setup, segment_client, harness):
    probe, node = setup
    image = probe.frame(test_scene(32, 32))
    cases = [
        (Segment.Request(image=image, instruction="cups", phrases=[f"cup {i}" for i in range(33)]),
         "phrases may hold at most 32 phrases, got 33"),
        (Segment.Request(image=image, instruction="cups", phrases=["cup", "x" * 201]),
         "phrases must not contain a phrase longer than 200 characters (one has 201)"),
        (Segment.Request(image=image, instruction="cups", phrases=["cup", " "]), "phrases must not contain empty phrases"),
        (Segment.Request(image=image, instruction="x" * 2001), "instruction of 2001 characters ignored (at most 2000)"),
        # Refused before anything changes: a bad request does not set the stream's instruction.
        (Segment.Request(instruction="green rings", phrases=["ring"] * 40, set_as_current=True), "at most 32 phrases"),
    ]
    for request, reason in cases:
        response = harness.call(segment_client, request)
        assert not response.success and reason in response.message
    accepted = harness.call(segment_client, Segment.Request(image=image, instruction="cups", phrases=[f"cup {i}" for i in range(32)]))
    assert accepted.success and len(accepted.segmentation.phrases) == 32
    assert probe.request(probe.frame(test_scene(32, 32))).instruction == "red circle"


def test_a_frame_that_waited_for_the_model_is_aged_again_and_dropped(setup, segment_client, harness):
    """A Segment call holds the model; a stream frame that was fresh when taken waits for it.

    The frame is stamped MAX_FRAME_AGE - 0.2 s in the past: young enough to pass the check when
    the worker takes it, too old once it has waited for the 32-phrase call (the call takes
    longer than 0.5 s on this model at 640x480). Before the fix it was processed and published
    late. A timing miss (frame taken before the call held the model) is retried.
    """
    probe, node = setup
    probe.wait_instruction("red circle", test_scene(32, 32))
    wait_for(segment_client.service_is_ready, 30, "the segment service")
    slow = Segment.Request(image=probe.frame(test_scene(480, 640, seed=3)), instruction="shapes",
                           phrases=[f"shape {i}" for i in range(32)])
    assert probe.set_parameter("max_frame_age", MAX_FRAME_AGE).successful
    try:
        outcomes = _frames_behind_a_slow_call(probe, node, segment_client, slow)
    finally:
        assert probe.set_parameter("max_frame_age", 5.0).successful
    assert outcomes[-1] == "dropped when the model was free", f"the frame was never dropped as too old: {outcomes}"


def _frames_behind_a_slow_call(probe, node, segment_client, slow) -> list[str]:
    """What became of a frame sent while a slow call held the model, for up to three tries."""
    outcomes = []
    for _ in range(3):
        dropped_before = probe.counter("dropped_too_old")
        log_before = node.log().count("old when the model was free")
        future = segment_client.call_async(slow)
        time.sleep(0.1)  # the call is holding the model now
        frame = probe.frame(test_scene(32, 32, seed=4))
        backdated = stamp_ns(unique_stamp()) - int((MAX_FRAME_AGE - 0.2) * 1e9)
        frame.header.stamp.sec, frame.header.stamp.nanosec = backdated // 10**9, backdated % 10**9
        probe.image_pub.publish(frame)
        wait_for(future.done, 60, "the slow Segment call")
        assert future.result().success, future.result().message
        time.sleep(0.5)
        result = probe.result_for(frame.header.stamp)
        if result is None and node.log().count("old when the model was free") > log_before:
            wait_for(lambda: int(probe.latest_diagnostics()["dropped_too_old"]) > dropped_before, 20, "the drop to be counted")
            outcomes.append("dropped when the model was free")
            return outcomes
        # Before the fix: "published late" (processing_latency = the wait for the model).
        outcomes.append("published late" if result is not None and result.processing_latency > 0.3 else
                        "published" if result is not None else "dropped when taken or lost")
    return outcomes


def test_every_kind_of_rejected_input_is_logged_once_even_in_a_burst(setup):
    probe, node = setup
    probe.wait_instruction("red circle", test_scene(32, 32))
    good = test_scene(20, 30)
    frames = []
    for change in ("jpeg", "no encoding", "short data", "short step", "0x0"):
        msg = probe.frame(good)
        if change == "jpeg":
            msg.encoding = "jpeg"
        elif change == "no encoding":
            msg.encoding = ""
        elif change == "short data":
            msg.data = msg.data[:-5]
        elif change == "short step":
            msg.step = 10
        else:
            msg.height, msg.width, msg.step, msg.data = 0, 0, 0, msg.data[:0]
        frames.append(msg)
    before = probe.counter("dropped_bad_input")
    # All within the warning period (2 s): one reason must not hide the next.
    for msg in frames:
        probe.image_pub.publish(msg)
        time.sleep(0.1)
    probe.instruct("   ")
    probe.instruct("x" * 100_000)
    wait_for(lambda: int(probe.latest_diagnostics()["dropped_bad_input"]) >= before + len(frames), 30, "the bad frames to be counted")
    reasons = [
        "frame dropped: encoding 'jpeg' is a compressed format",
        "frame dropped: image has no encoding",
        "frame dropped: data has 1795 bytes, expected step x height = 90 x 20 = 1800",
        "frame dropped: step 10 is shorter than a row of 30 rgb8 pixels (90 bytes)",
        "frame dropped: empty image (0x0)",
        "instruction topic: empty instruction ignored",
        "instruction topic: instruction of 100000 characters ignored (at most 2000)",
    ]
    wait_for(lambda: all(reason in node.log() for reason in reasons), 20,
             "a warning for every reason: " + ", ".join(r for r in reasons if r not in node.log()))
    probe.instruct("red circle")
    assert probe.wait_instruction("red circle", test_scene(32, 32)).instruction == "red circle"


def test_the_log_says_how_large_a_frame_the_dds_profile_carries(setup):
    probe, node = setup
    assert ("Fast DDS profile fastdds_large_data.xml: images up to 16 MiB reach this node from other processes "
            "(2560x2048 rgb8 fits, 3840x2160 rgb8 (23.7 MiB) does not)") in node.log()
