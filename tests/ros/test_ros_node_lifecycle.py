"""Lifecycle of segment_node driven from this process through its change_state service.

One node process, started with autostart:=false and compressed input, after its instruction
was already published (transient local must deliver it late). The test walks the node
through a failed configure (bad model directory), configure, activate, deactivate, cleanup
and shutdown, checking that frames are processed exactly while it is active.
"""
from __future__ import annotations

import array
import time

import cv2
import numpy as np
import pytest
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage

from rosprobe import Probe, test_scene, unique_stamp, wait_for

NS = "/lifecycle_test"


def compressed(pixels: np.ndarray, frame_id: str = "camera") -> CompressedImage:
    ok, png = cv2.imencode(".png", np.ascontiguousarray(pixels[:, :, ::-1]))
    assert ok
    msg = CompressedImage(format="png")
    msg.header.stamp = unique_stamp()
    msg.header.frame_id = frame_id
    msg.data = array.array("B", png.tobytes())
    return msg


class Lifecycle:
    def __init__(self, harness) -> None:
        self.harness = harness
        self.get_client = harness.node.create_client(GetState, f"{NS}/segment_node/get_state")
        self.change_client = harness.node.create_client(ChangeState, f"{NS}/segment_node/change_state")

    def state(self) -> int:
        return self.harness.call(self.get_client, GetState.Request()).current_state.id

    def change(self, transition: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition))
        return self.harness.call(self.change_client, request, timeout=120).success


@pytest.fixture(scope="module")
def setup(start_node, tiny_model_dir, harness):
    probe = Probe(harness, NS)
    probe.instruct("red circle")  # before the node exists
    time.sleep(0.2)
    node = start_node(NS, {
        "model": str(tiny_model_dir), "device": "cpu", "threshold": 0.0, "autostart": False,
        "use_compressed": True, "diagnostics_period": 0.2, "max_frame_age": 5.0,
    })
    compressed_pub = harness.node.create_publisher(
        CompressedImage, f"{NS}/image/compressed", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    )
    yield probe, node, Lifecycle(harness), compressed_pub
    node.stop()
    harness.node.destroy_publisher(compressed_pub)
    probe.close()


def no_result_for(probe: Probe, publisher, msg, seconds: float = 2.0) -> bool:
    """Publish a few times over `seconds` and report whether no result came back."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        publisher.publish(msg)
        time.sleep(0.25)
    return probe.result_for(msg.header.stamp) is None


def test_lifecycle_through_change_state(setup, tiny_model_dir):
    probe, node, lifecycle, pub = setup
    assert lifecycle.state() == State.PRIMARY_STATE_UNCONFIGURED

    # A model directory that fails to load: configure fails, the node stays up and says why.
    assert probe.set_parameter("model", "/nonexistent/model_dir").successful
    assert lifecycle.change(Transition.TRANSITION_CONFIGURE) is False
    assert lifecycle.state() == State.PRIMARY_STATE_UNCONFIGURED and node.alive()
    def naming_the_directory():
        values = probe.latest_diagnostics()
        return values if "/nonexistent/model_dir" in values["_message"] else None

    diag = wait_for(naming_the_directory, 30, "diagnostics naming the bad model directory")
    assert diag["_level"] == b"\x02" and "does not exist" in diag["_message"]

    assert probe.set_parameter("model", str(tiny_model_dir)).successful
    assert lifecycle.change(Transition.TRANSITION_CONFIGURE) is True
    assert lifecycle.state() == State.PRIMARY_STATE_INACTIVE
    wait_for(lambda: pub.get_subscription_count() > 0, 30, "the node subscribing to image/compressed")
    assert "warm-up" in node.log()

    # Inactive: frames are not processed.
    assert no_result_for(probe, pub, compressed(test_scene(60, 80)))

    assert lifecycle.change(Transition.TRANSITION_ACTIVATE) is True
    assert lifecycle.state() == State.PRIMARY_STATE_ACTIVE
    msg = compressed(test_scene(60, 80, seed=1), frame_id="compressed_cam")
    result = probe.request(msg, publisher=pub)
    # The instruction was published before the node started: transient local delivered it.
    assert result.instruction == "red circle" and result.instruction_id == 1
    assert (result.height, result.width, result.header.frame_id) == (60, 80, "compressed_cam")

    # Garbage compressed data is dropped and counted; the node keeps going.
    before = probe.counter("dropped_bad_input")
    garbage = CompressedImage(format="jpeg")
    garbage.header.stamp = unique_stamp()
    garbage.data = array.array("B", b"\xff\xd8 definitely not a jpeg")
    pub.publish(garbage)
    wait_for(lambda: int(probe.latest_diagnostics()["dropped_bad_input"]) > before, 30, "the garbage frame to be counted")
    assert probe.request(compressed(test_scene(60, 80, seed=2)), publisher=pub).instruction == "red circle"

    assert lifecycle.change(Transition.TRANSITION_DEACTIVATE) is True
    assert lifecycle.state() == State.PRIMARY_STATE_INACTIVE
    assert no_result_for(probe, pub, compressed(test_scene(60, 80, seed=3)))

    assert lifecycle.change(Transition.TRANSITION_CLEANUP) is True
    assert lifecycle.state() == State.PRIMARY_STATE_UNCONFIGURED
    wait_for(lambda: pub.get_subscription_count() == 0, 30, "the image subscription to go away on cleanup")
    wait_for(lambda: probe.latest_diagnostics()["state"] == "unconfigured", 30, "diagnostics to report unconfigured")

    # Configure again after cleanup (the model is loaded anew), then shut down.
    assert lifecycle.change(Transition.TRANSITION_CONFIGURE) is True
    assert lifecycle.change(Transition.TRANSITION_ACTIVATE) is True
    assert probe.request(compressed(test_scene(60, 80, seed=4)), publisher=pub).instruction == "red circle"
    assert lifecycle.change(Transition.TRANSITION_ACTIVE_SHUTDOWN) is True
    assert lifecycle.state() == State.PRIMARY_STATE_FINALIZED
    assert node.alive()
