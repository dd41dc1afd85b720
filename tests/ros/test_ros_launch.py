"""`ros2 launch instructsam_ros segment.launch.py` and `ros2 run instructsam_ros segment_node` for
real: the README's "On a robot" commands, each started as a process from the package's install
space (its share directory found through AMENT_PREFIX_PATH, as on a robot), answered by this
process over DDS, and stopped with Ctrl-C (SIGINT to the process group): exit status 0 and
nothing left running. A node start costs seconds, so there are few launches and each checks
several things: a clean start with the package's parameter file (read by ROS's own reader), the
arguments reaching the node, the 3-D markers with depth, compressed input of several cameras in
a namespace with the user's own parameter file. Bad arguments stop the launch with one line.
"""
from __future__ import annotations

import array
import ast
import math
import re
import time
from collections import Counter
from contextlib import contextmanager

import cv2
import numpy as np
import pytest
from rcl_interfaces.srv import GetParameters
from rclpy.parameter import parameter_value_to_python
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String
from visualization_msgs.msg import Marker, MarkerArray

from instructsam_ros.demo.depth_scenes import Plate, pinhole, render
from instructsam_ros.messages.images import image_msg_to_array
from launching import README, REPO, RosCommand, node_lines, readme_commands, require_launch, stray_lines
from rosprobe import BEST_EFFORT, LATCHED, RELIABLE, Probe, camera_info, depth_image, stamp_ns, unique_stamp, wait_for

LAUNCH = "ros2 launch instructsam_ros segment.launch.py"
PLAIN = f"{LAUNCH} image:=/camera/color/image_raw"
DEPTH = f"{LAUNCH} image:=/camera/color/image_raw depth:=/camera/aligned_depth_to_color/image_raw"
CAMERAS = (f"{LAUNCH} namespace:=robot cameras:=front,wrist images:=/front/image_raw,/wrist/image_raw "
           "use_compressed:=true params_file:=my_params.yaml")
RUN = "ros2 run instructsam_ros segment_node --ros-args -r __ns:=/front -r image:=/front/image_raw"
SHOW_ARGS = f"{LAUNCH} --show-args"
INSTRUCTION = "squares"  # a bare phrase the embedded default model finds in these scenes
START_TIMEOUT = 120.0  # a node start loads the model (seconds; more on a loaded CI machine)

K = pinhole(640, 480, 40.0)
PLATES = [Plate((-0.12, 0.0, 0.60), (0.10, 0.10), (220, 40, 40)), Plate((0.09, 0.0, 0.75), (0.12, 0.12), (40, 160, 60))]
BOTH = render(PLATES, K, wall_depth=1.5)
FIRST_ONLY = render(PLATES[:1], K, wall_depth=1.5)  # the second square gone


def test_the_readme_commands_are_the_tested_ones():
    """Every `ros2 launch`/`ros2 run` line of the README's "On a robot" is one this module runs."""
    assert readme_commands() == [PLAIN, DEPTH, CAMERAS, RUN, SHOW_ARGS]


# ------------------------------------------------------------------------------------ helpers
@contextmanager
def started(command: str, tmp_path, name: str):
    require_launch()
    process = RosCommand(command, tmp_path / f"{name}.log", tmp_path)
    try:
        yield process
    except BaseException:
        # The node's own account (drops, warnings) next to the failure, in pytest's captured output.
        print(f"--- the last lines of `{command}`:\n" + "\n".join(process.lines()[-60:]))
        raise
    finally:
        process.close()


def wait_ready(process: RosCommand, node_fqn: str) -> None:
    """Until the node listens to its cameras (model loaded, warmed up, active); fails early if it died."""
    logger = f"[{node_fqn.strip('/').replace('/', '.')}]: "

    def ready():
        assert process.proc.poll() is None, f"exited with {process.proc.returncode}:\n{process.output()[-3000:]}"
        return any(logger in line and "listening on" in line for line in process.lines())

    wait_for(ready, START_TIMEOUT, f"{node_fqn} to start", interval=0.1)


def assert_clean(lines: list[str]) -> None:
    stray = stray_lines(lines)
    assert not stray, "lines other than INFO:\n" + "\n".join(stray)


def stop(process: RosCommand) -> list[str]:
    """Ctrl-C: exit status 0 within the node's shutdown budget, nothing of the group left."""
    status, seconds = process.interrupt()
    lines = process.lines()
    assert status == 0, "\n".join(lines[-30:])
    assert seconds < 5.0, seconds
    wait_for(lambda: not process.group_alive(), 5, "every process of the group to end")
    return lines


def parameters(harness, node_fqn: str, names: list[str]) -> dict:
    client = harness.node.create_client(GetParameters, f"{node_fqn}/get_parameters")
    try:
        response = harness.call(client, GetParameters.Request(names=names))
    finally:
        harness.node.destroy_client(client)
    return {name: parameter_value_to_python(value) for name, value in zip(names, response.values)}


def wait_answer(probe: Probe, publisher, pixels: np.ndarray, instruction: str, timeout: float = 60.0):
    """Frames of `pixels` until one is answered under `instruction`; that result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe.request(probe.frame(pixels, frame_id="colour_optical"), publisher=publisher,
                               timeout=max(1.0, deadline - time.monotonic()), restamp=True)
        if result.instruction == instruction:
            return result
    raise AssertionError(f"no answer under {instruction!r} within {timeout:.0f} s")


class Endpoints:
    """Publishers and subscriptions of this process for one test, destroyed at its end."""

    def __init__(self, harness) -> None:
        self.node = harness.node
        self._made: list = []
        self.received: list = []

    def publisher(self, msg_type, topic: str, qos=BEST_EFFORT):
        self._made.append(("publisher", self.node.create_publisher(msg_type, topic, qos)))
        return self._made[-1][1]

    def subscribe(self, msg_type, topic: str) -> list:
        bucket: list = []
        self._made.append(("subscription", self.node.create_subscription(msg_type, topic, bucket.append, RELIABLE)))
        return bucket

    def close(self) -> None:
        for kind, entity in self._made:
            getattr(self.node, f"destroy_{kind}")(entity)


@contextmanager
def endpoints(harness):
    made = Endpoints(harness)
    try:
        yield made
    finally:
        made.close()


@contextmanager
def one_camera(harness, tmp_path, command: str, namespace: str, image_topic: str):
    """`command` started; this process's probe of its node, a publisher on its image topic and the
    latched instruction INSTRUCTION; yields (process, probe, image publisher, endpoints) once the
    node listens. Everything is closed at the end, whatever happens."""
    with started(command, tmp_path, command.split()[1]) as process, endpoints(harness) as made:
        probe = Probe(harness, namespace)
        image_pub = made.publisher(Image, image_topic)
        made.publisher(String, f"{namespace}/instruction", LATCHED).publish(String(data=INSTRUCTION))
        try:
            wait_ready(process, f"{namespace}/segment_node")
            yield process, probe, image_pub, made
        finally:
            probe.close()


# ------------------------------------------------------------------------------------ launches
def test_one_camera_with_the_package_parameter_file_starts_clean_and_answers(harness, tmp_path):
    with one_camera(harness, tmp_path, PLAIN, "", "/camera/color/image_raw") as (launch, probe, image_pub, _):
        # Launch's and the node's INFO lines only: no [ERROR] about `phrases: []` (ROS's
        # parameter-file reader gives an empty list no type), no empty line of a progress bar.
        assert_clean(launch.lines())
        # The launch's defaults and the package's params file reached the node, typed.
        got = parameters(harness, "/segment_node", ["model", "device", "threshold", "use_compressed", "autostart",
                                                     "depth", "phrases", "max_frame_age", "publish_overlay"])
        assert got == {"model": "default", "device": "auto", "threshold": 0.3, "use_compressed": False,
                       "autostart": True, "depth": False, "phrases": [], "max_frame_age": 0.5, "publish_overlay": True}
        wait_for(lambda: image_pub.get_subscription_count() > 0, 30, "the node subscribing to /camera/color/image_raw")
        result = wait_answer(probe, image_pub, BOTH.rgb, INSTRUCTION)
        assert (result.width, result.height, result.header.frame_id) == (640, 480, "colour_optical")
        assert result.depth_status == result.DEPTH_DISABLED
        wait_for(lambda: probe.image_for(probe.overlays, result.header.stamp), 20, "the overlay of the frame")
        wait_for(lambda: probe.image_for(probe.labels, result.header.stamp), 20, "the label image of the frame")
        assert_clean(launch.lines())
        lines = stop(launch)
    assert any(line.startswith("[INFO] [segment_node-1]: process has finished cleanly") for line in lines)
    assert all(line.strip() for line in node_lines(lines))


def send_rgbd(probe: Probe, image_pub, depth_pub, info_pub, frame, timeout: float = 60.0):
    """CameraInfo, depth and colour of `frame` with one stamp, again every 2 s until answered, each
    time with a fresh stamp (the launch's max_frame_age drops a frame whose stamp has aged)."""
    colour = probe.frame(frame.rgb, frame_id="colour_optical")
    depth = depth_image(frame.depth, "32FC1")
    depth.header.frame_id = "depth_optical"
    info = camera_info(K)

    def depth_first(stamp) -> None:
        depth.header.stamp = info.header.stamp = stamp
        info_pub.publish(info)
        depth_pub.publish(depth)
        time.sleep(0.02)

    return probe.request(colour, publisher=image_pub, timeout=timeout, restamp=True, before_each=depth_first)


def markers_of(bucket: list[MarkerArray], stamp) -> MarkerArray:
    return wait_for(lambda: next((m for m in list(bucket) if m.markers and all(
        stamp_ns(marker.header.stamp) == stamp_ns(stamp) for marker in m.markers)), None), 20, "the frame's markers")


def edge_colour(overlay: np.ndarray, instance) -> tuple[int, int, int]:
    """The colour the overlay drew the instance's box outline in (its left edge, most pixels)."""
    x0, y0, height = instance.box.x_offset, instance.box.y_offset, instance.box.height
    column = overlay[y0 + height // 4: y0 + 3 * height // 4, x0]
    return Counter(tuple(int(c) for c in pixel) for pixel in column).most_common(1)[0][0]


def check_markers(markers: MarkerArray, result, overlay: np.ndarray, shown_before: set[int]) -> dict[str, int]:
    """The markers of one result: a box and a label per located instance, in the depth image's
    frame and stamp, coloured as the overlay, and DELETEs of both for each instance gone."""
    located = {inst.id: inst for inst in result.instances if inst.location.status == inst.location.OK}
    adds = [m for m in markers.markers if m.action == Marker.ADD]
    deletes = {(m.ns, m.id) for m in markers.markers if m.action == Marker.DELETE}
    boxes = {m.id: m for m in adds if m.ns == "instances"}
    labels = {m.id: m for m in adds if m.ns == "labels"}
    assert len(adds) == 2 * len(located) and set(boxes) == set(labels) == set(located)
    gone = shown_before - set(located)
    assert deletes == {(ns, i) for i in gone for ns in ("instances", "labels")}
    assert len(markers.markers) == 2 * len(located) + 2 * len(gone)
    for marker in markers.markers:
        assert marker.header.frame_id == "depth_optical" == result.depth_header.frame_id
        assert stamp_ns(marker.header.stamp) == stamp_ns(result.depth_header.stamp)
    for instance_id, instance in located.items():
        box, label, location = boxes[instance_id], labels[instance_id], instance.location
        assert box.type == Marker.CUBE and label.type == Marker.TEXT_VIEW_FACING
        centre = (box.pose.position.x, box.pose.position.y, box.pose.position.z)
        assert centre == (location.box_center.x, location.box_center.y, location.box_center.z)
        # Width and height as located (10-12 cm squares); a square facing the camera has almost no
        # depth extent, drawn thin but visible.
        assert (box.scale.x, box.scale.y) == (location.box_size.x, location.box_size.y)
        assert 0.0 < box.scale.z < 0.02 and box.scale.z >= location.box_size.z
        distance = math.sqrt(location.center.x ** 2 + location.center.y ** 2 + location.center.z ** 2)
        assert label.text == f"{instance_id} {instance.phrase} {distance:.2f} m"
        assert label.pose.position.y < box.pose.position.y - box.scale.y / 2  # above the box (y points down)
        rgb = tuple(round(c * 255) for c in (box.color.r, box.color.g, box.color.b))
        assert rgb == edge_colour(overlay, instance), instance_id
        assert (label.color.r, label.color.g, label.color.b) == (box.color.r, box.color.g, box.color.b)
        assert 0.0 < box.color.a < 1.0 and label.color.a == 1.0
    return {"boxes": len(boxes), "labels": len(labels), "deletes": len(deletes)}


def test_depth_launch_publishes_markers_of_the_located_instances(harness, tmp_path):
    with one_camera(harness, tmp_path, DEPTH, "", "/camera/color/image_raw") as (launch, probe, image_pub, made):
        depth_pub = made.publisher(Image, "/camera/aligned_depth_to_color/image_raw")
        info_pub = made.publisher(CameraInfo, "/camera/aligned_depth_to_color/camera_info")  # next to the depth topic
        marker_arrays = made.subscribe(MarkerArray, "/instance_markers")
        assert_clean(launch.lines())
        assert parameters(harness, "/segment_node", ["depth"]) == {"depth": True}
        wait_for(lambda: min(p.get_subscription_count() for p in (image_pub, depth_pub, info_pub)) > 0, 30,
                 "the node subscribing to the colour, depth and camera_info topics")
        wait_for(lambda: made.node.count_publishers("/instance_markers") > 0, 30, "the node's instance_markers")
        shown: set[int] = set()
        for frame in (BOTH, BOTH, FIRST_ONLY):
            result = send_rgbd(probe, image_pub, depth_pub, info_pub, frame)
            assert result.instruction == INSTRUCTION and result.depth_status == result.DEPTH_OK, result.depth_problem
            overlay = image_msg_to_array(wait_for(lambda: probe.image_for(probe.overlays, result.header.stamp), 20,
                                                  "the overlay of the frame"))
            counts = check_markers(markers_of(marker_arrays, result.header.stamp), result, overlay, shown)
            shown = {inst.id for inst in result.instances if inst.location.status == inst.location.OK}
            if frame is BOTH:
                assert counts["boxes"] >= 2 and counts["deletes"] == 0, counts
        assert counts["deletes"] >= 2, counts  # the second square is gone: its box and label deleted
        stop(launch)


def test_cameras_in_a_namespace_with_compressed_input_and_an_own_parameter_file(harness, tmp_path):
    package_yaml = (REPO / "instructsam_ros" / "config" / "segment_node.yaml").read_text()
    mine = package_yaml.replace("max_frame_age: 0.5 ", "max_frame_age: 3.0 ").replace("tracking_iou: 0.3 ", "tracking_iou: 0.45 ")
    assert mine.count("3.0 ") > package_yaml.count("3.0 ") and "tracking_iou: 0.45" in mine
    (tmp_path / "my_params.yaml").write_text(mine)
    jpeg = CompressedImage(format="jpeg")
    jpeg.data = array.array("B", cv2.imencode(".jpg", BOTH.rgb[:, :, ::-1])[1].tobytes())
    with started(CAMERAS, tmp_path, "cameras") as launch, endpoints(harness) as made:
        probes = {camera: Probe(harness, "/robot", camera=camera) for camera in ("front", "wrist")}
        publishers = {camera: made.publisher(CompressedImage, f"/{camera}/image_raw/compressed") for camera in probes}
        made.publisher(String, "/robot/instruction", LATCHED).publish(String(data=INSTRUCTION))
        try:
            wait_ready(launch, "/robot/segment_node")
            assert_clean(launch.lines())
            got = parameters(harness, "/robot/segment_node", ["cameras", "use_compressed", "max_frame_age", "tracking_iou",
                                                               "threshold", "phrases"])
            assert got == {"cameras": ["front", "wrist"], "use_compressed": True, "max_frame_age": 3.0,
                           "tracking_iou": 0.45, "threshold": 0.3, "phrases": []}
            wait_for(lambda: min(p.get_subscription_count() for p in publishers.values()) > 0, 30,
                     "the node subscribing to both compressed topics")
            for camera, probe in probes.items():
                jpeg.header.stamp, jpeg.header.frame_id = unique_stamp(), f"{camera}_optical"
                result = probe.request(jpeg, publisher=publishers[camera], timeout=60, restamp=True)
                assert result.header.frame_id == f"{camera}_optical" and (result.width, result.height) == (640, 480)
            stop(launch)
        finally:
            for probe in probes.values():
                probe.close()


def test_ros2_run_starts_the_node_that_answers_and_stops_on_ctrl_c(harness, tmp_path):
    with one_camera(harness, tmp_path, RUN, "/front", "/front/image_raw") as (run, probe, image_pub, _):
        # No launch prefix here: the node's own lines, every one an INFO line, nothing else.
        assert all(re.match(r"^\[INFO\] \[\d+\.\d+\] \[front\.segment_node\]: \S", line) for line in run.lines()), \
            run.output()
        wait_for(lambda: image_pub.get_subscription_count() > 0, 30, "the node subscribing to /front/image_raw")
        result = wait_answer(probe, image_pub, BOTH.rgb, INSTRUCTION)
        assert (result.width, result.height) == (640, 480)
        stop(run)


def _declared_arguments() -> dict[str, str]:
    """Name -> default text of every DeclareLaunchArgument of the launch file (read with ast)."""
    tree = ast.parse((REPO / "launch" / "segment.launch.py").read_text())
    declared = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "DeclareLaunchArgument":
            default = next(k.value for k in call.keywords if k.arg == "default_value")
            declared[ast.literal_eval(call.args[0])] = ast.literal_eval(default) if isinstance(default, ast.Constant) else None
    return declared


def test_show_args_lists_every_argument_the_readme_documents(tmp_path):
    with started(SHOW_ARGS, tmp_path, "show_args") as show:
        assert show.wait(60) == 0, show.output()
        text = show.output()
    listed = dict(re.findall(r"^    '(\w+)':\n(?:.*\n)*?        \(default: (.*)\)$", text, re.M))
    declared = _declared_arguments()
    assert set(listed) == set(declared), (set(listed) ^ set(declared))
    for name, default in declared.items():
        if default is not None:  # the share-directory paths are substitutions, printed as such
            assert listed[name] == repr(default), name
    assert "FindPackageShare(pkg='instructsam_ros')" in listed["params_file"] and "segment_node.yaml" in listed["params_file"]
    section = README.read_text().split("## On a robot", 1)[1].split("\n## ", 1)[0]
    assert not [name for name in declared if f"`{name}`" not in section], "launch arguments the README does not name"


@pytest.mark.parametrize("argument, words", [
    ("depth:=true", "depth:=true is not a topic: depth names the aligned depth image topic"),
    ("threshold:=high", "threshold must be of type float, got str"),
    ("use_compressed:=maybe", "use_compressed must be of type bool, got str"),
    ("threshold:=1.5", "threshold must be in [0.0, 1.0]"),
])
def test_bad_arguments_stop_the_launch_with_one_line(argument, words, tmp_path):
    with started(f"{LAUNCH} {argument}", tmp_path, "bad") as launch:
        assert launch.wait(60) == 1, launch.output()
        lines = launch.lines()
    errors = [line for line in lines if "[ERROR]" in line]
    assert len(errors) == 1 and words in errors[0], lines
    assert not any("process started" in line for line in lines)
