"""Parameter handling of SegmentNode, in process (no model is loaded before configure)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from instructsam_ros.segment_node.parameters import PARAMETERS
from instructsam_ros.segment_node.node import SegmentNode
from rosprobe import RELIABLE, wait_for

REPO = Path(__file__).resolve().parents[2]
FLOAT_PARAMETERS = [entry for entry in PARAMETERS if isinstance(entry.default, float)]


@pytest.fixture
def make_node(harness):
    nodes = []

    def make(cli_args=None, **overrides):
        node = SegmentNode(
            "param_test_node",
            context=harness.context,
            cli_args=cli_args,
            parameter_overrides=[Parameter(name, value=value) for name, value in overrides.items()],
        )
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.destroy_node()


def test_every_parameter_is_declared_with_its_default(make_node):
    node = make_node()
    for entry in PARAMETERS:
        assert node.get_parameter(entry.name).value == entry.default, entry.name
    assert node.describe_parameter("threshold").description.startswith("minimum instance score")


def test_bad_start_values_fall_back_to_defaults_and_integers_work_for_floats(make_node):
    node = make_node(threshold="high", max_instances=5000, phrases=["cup", " "], max_frame_age=2, instruction="find the cups")
    assert node.get_parameter("threshold").value == 0.3
    assert node.get_parameter("max_instances").value == 100
    assert node.get_parameter("phrases").value == []
    assert node.get_parameter("max_frame_age").value == 2  # an int where a float is expected is fine
    assert node.instruction.snapshot() == ("find the cups", 1, [])


def test_runtime_changes_are_validated_and_applied(make_node):
    node = make_node()
    refused = node.set_parameters([Parameter("threshold", value=2.0)])[0]
    assert not refused.successful and "threshold must be in [0.0, 1.0]" in refused.reason
    assert node.get_parameter("threshold").value == 0.3
    # One bad value refuses the whole batch: nothing of it is applied.
    batch = node.set_parameters_atomically([Parameter("threshold", value=0.5), Parameter("image_qos_depth", value=0)])
    assert not batch.successful and node.get_parameter("threshold").value == 0.3
    assert node.set_parameters([Parameter("threshold", value=1)])[0].successful
    assert node._settings["threshold"] == 1
    assert node.set_parameters([Parameter("instruction", value="find the cups")])[0].successful
    assert node.set_parameters([Parameter("phrases", value=["cup", "mug"])])[0].successful
    assert node.instruction.snapshot() == ("find the cups", 1, ["cup", "mug"])
    assert node.set_parameters([Parameter("instruction", value="find the cups")])[0].successful
    assert node.instruction.snapshot()[1] == 2  # the same text again is a new instruction


def test_non_finite_floats_are_refused_from_the_command_line_and_at_run_time(make_node):
    # `--ros-args -p threshold:=.nan` is YAML's NaN: it used to be accepted, drop every frame,
    # and make the next configure blame the model.
    node = make_node(cli_args=["--ros-args", "-p", "threshold:=.nan", "-p", "max_frame_age:=.inf"])
    assert node.get_parameter("threshold").value == 0.3
    assert node.get_parameter("max_frame_age").value == 0.5
    assert node._settings["threshold"] == 0.3
    for entry in FLOAT_PARAMETERS:
        for value in (math.nan, math.inf):
            refused = node.set_parameters([Parameter(entry.name, value=value)])[0]
            assert not refused.successful and refused.reason == f"{entry.name} must be a finite number, got {value}"
        assert node.get_parameter(entry.name).value == entry.default


class ErrorRecorder:
    """A node's logger that also keeps what was logged as an error."""

    def __init__(self, logger, errors: list[str]) -> None:
        self._logger, self._errors = logger, errors

    def error(self, message, *args, **kwargs):
        self._errors.append(message)
        return self._logger.error(message, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._logger, name)


def test_the_package_parameter_file_read_by_ros_gives_its_values_without_an_error(harness):
    """ROS's parameter-file reader (rcl, as `--params-file` and launch use it) gives an empty YAML
    list (`phrases: []`) no type: the node receives it unset and takes it as the empty list it
    is, without an error; every other value arrives as the file writes it (read here with PyYAML)."""
    errors: list[str] = []

    class Recording(SegmentNode):
        def get_logger(self):
            return ErrorRecorder(super().get_logger(), errors)

    config = REPO / "instructsam_ros" / "config" / "segment_node.yaml"
    written = yaml.safe_load(config.read_text())["/**"]["ros__parameters"]
    assert written["phrases"] == []
    node = Recording("param_file_node", context=harness.context, cli_args=["--ros-args", "--params-file", str(config)])
    try:
        assert errors == []
        for name, value in written.items():
            assert node.get_parameter(name).value == value, name
        assert node.instruction.snapshot()[2] == []
    finally:
        node.destroy_node()


def test_a_missing_device_is_named_and_the_node_stays_unconfigured(make_node, harness, tiny_model_dir):
    statuses = []
    sub = harness.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), RELIABLE)
    node = make_node(model=str(tiny_model_dir), device="cuda:7", diagnostics_period=0.1)
    executor = SingleThreadedExecutor(context=harness.context)
    executor.add_node(node)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE

        def status_of_this_node():
            executor.spin_once(timeout_sec=0.05)
            return next((st for st in reversed(statuses) if st.name.startswith(node.get_fully_qualified_name())), None)

        status = wait_for(status_of_this_node, 20, "/diagnostics from the in-process node")
        assert status.level == b"\x02"
        assert "device 'cuda:7'" in status.message and "fix the 'device' parameter" in status.message
        assert "model" not in status.message  # the model directory is fine: it is not blamed
        # With a device the machine has, the same node configures.
        assert node.set_parameters([Parameter("device", value="cpu")])[0].successful
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    finally:
        executor.remove_node(node)
        executor.shutdown()
        harness.node.destroy_subscription(sub)
        node._teardown()


def test_camera_parameters_exist_while_their_camera_does(make_node, tiny_model_dir):
    """<camera>.max_frame_age is declared for each listed camera at configure (a value from the
    command line applies, a bad one falls back to the default), and goes with its camera."""
    assert make_node(cameras=["front", "front"]).get_parameter("cameras").value == []  # refused at start
    node = make_node(cli_args=["--ros-args", "-p", "wrist.max_frame_age:=0.2", "-p", "rear.max_frame_age:=-3.0"],
                     model=str(tiny_model_dir), device="cpu", warmup=False, cameras=["front", "wrist", "rear"])
    assert not node.has_parameter("wrist.max_frame_age")  # no camera exists before configure
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert list(node._streams) == ["front", "wrist", "rear"]
        assert node.get_parameter("wrist.max_frame_age").value == 0.2
        assert node.get_parameter("front.max_frame_age").value == -1.0
        assert node.get_parameter("rear.max_frame_age").value == -1.0  # -3 refused, default kept
        refused = node.set_parameters([Parameter("front.max_frame_age", value=math.nan)])[0]
        assert not refused.successful and refused.reason == "front.max_frame_age must be a finite number, got nan"
        assert node._max_frame_age(node._streams["wrist"]) == 0.2
        assert node._max_frame_age(node._streams["front"]) == 0.5  # the node's
        # A new camera list applies at the next activation.
        assert node.set_parameters([Parameter("cameras", value=["front", "wrist"])])[0].successful
        assert node.has_parameter("rear.max_frame_age") and "rear" in node._streams
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert list(node._streams) == ["front", "wrist"] and not node.has_parameter("rear.max_frame_age")
        assert node.get_parameter("wrist.max_frame_age").value == 0.2  # kept with its camera
    finally:
        node._teardown()
