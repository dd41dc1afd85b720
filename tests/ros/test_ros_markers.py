"""instance_markers: boxes and labels of located instances for RViz and Foxglove, on hand-built
results (the node's markers over DDS: tests/ros/test_ros_launch.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from instructsam_core.instances import Instance
from instructsam_ros.interfaces import Instance as InstanceMsg
from instructsam_ros.interfaces import InstanceSegmentation
from instructsam_ros.messages.marker_layout import LocatedInstance, MarkerSet
from instructsam_ros.messages.markers import frame_markers, located_instances
from instructsam_ros.messages.overlay import draw_overlay


def overlay_outline_colour(instance_id: int) -> tuple[int, int, int]:
    """The colour the overlay draws instance `instance_id`'s box outline in (read off a drawing)."""
    labels = np.zeros((60, 80), np.uint16)
    labels[20:40, 20:60] = instance_id
    mask = labels > 0
    drawn = draw_overlay(np.zeros((60, 80, 3), np.uint8), labels, [Instance("cup", 0.9, mask, (20, 20, 60, 40))],
                         [instance_id], [(20, 20, 60, 40)])
    return tuple(int(c) for c in drawn[30, 20])  # the left edge, below the label


def located(instance_id: int, phrase: str, center, box_center, box_size, status: int = 1) -> InstanceMsg:
    msg = InstanceMsg(id=instance_id, phrase=phrase)
    location = msg.location
    location.status = status
    location.center.x, location.center.y, location.center.z = center
    location.box_center.x, location.box_center.y, location.box_center.z = box_center
    location.box_size.x, location.box_size.y, location.box_size.z = box_size
    return msg


def result(instances, depth_status=InstanceSegmentation.DEPTH_OK) -> InstanceSegmentation:
    msg = InstanceSegmentation(instances=instances, depth_status=depth_status)
    msg.header = Header(stamp=Time(sec=5, nanosec=100), frame_id="colour_optical")
    msg.depth_header = Header(stamp=Time(sec=5, nanosec=90), frame_id="depth_optical")
    return msg


def by_key(markers) -> dict[tuple[str, int], Marker]:
    return {(m.ns, m.id): m for m in markers.markers}


def test_each_located_instance_is_a_box_and_a_label_in_the_overlays_colour():
    cup = located(7, "red cup", (0.3, -0.1, 0.8), (0.31, -0.1, 0.82), (0.08, 0.1, 0.0))
    far = located(9, "bottle", (0.0, 0.0, 2.0), (0.0, 0.0, 2.0), (0.06, 0.2, 0.05))
    unlocated = located(11, "cup", (0, 0, 0), (0, 0, 0), (0, 0, 0), status=2)  # TOO_FEW_VALID: nothing to draw
    markers = by_key(frame_markers(result([cup, far, unlocated]), MarkerSet()))
    assert sorted(markers) == [("instances", 7), ("instances", 9), ("labels", 7), ("labels", 9)]
    box, label = markers[("instances", 7)], markers[("labels", 7)]
    assert box.header.frame_id == label.header.frame_id == "depth_optical"
    assert (box.header.stamp.sec, box.header.stamp.nanosec) == (5, 90)  # the depth image's stamp
    assert box.type == Marker.CUBE and box.action == Marker.ADD and box.pose.orientation.w == 1.0
    assert (box.pose.position.x, box.pose.position.y, box.pose.position.z) == (0.31, -0.1, 0.82)
    # A flat instance (no depth extent) is drawn 5 mm thick, the other sides as located.
    assert (box.scale.x, box.scale.y, box.scale.z) == (0.08, 0.1, 0.005)
    assert (markers[("instances", 9)].scale.x, markers[("instances", 9)].scale.z) == (0.06, 0.05)
    assert label.type == Marker.TEXT_VIEW_FACING and label.text == f"7 red cup {math.sqrt(0.09 + 0.01 + 0.64):.2f} m"
    assert label.text == "7 red cup 0.86 m" and markers[("labels", 9)].text == "9 bottle 2.00 m"
    assert label.pose.position.y < 0.31 - 0.05  # above the box's top (y points down)
    for instance_id in (7, 9):
        box, label = markers[("instances", instance_id)], markers[("labels", instance_id)]
        rgb = tuple(round(c * 255) for c in (box.color.r, box.color.g, box.color.b))
        assert rgb == overlay_outline_colour(instance_id)
        assert (label.color.r, label.color.g, label.color.b) == (box.color.r, box.color.g, box.color.b)
        assert box.color.a == 0.5 and label.color.a == 1.0
    assert by_key(frame_markers(result([cup]), MarkerSet()))[("instances", 7)].color != markers[("instances", 9)].color


def test_instances_that_vanish_are_deleted_once():
    shown = MarkerSet()
    cup = located(1, "cup", (0, 0, 1), (0, 0, 1), (0.1, 0.1, 0.1))
    mug = located(2, "mug", (0.2, 0, 1), (0.2, 0, 1), (0.1, 0.1, 0.1))
    assert len(frame_markers(result([cup, mug]), shown).markers) == 4
    second = frame_markers(result([mug]), shown)
    deletes = {(m.ns, m.id) for m in second.markers if m.action == Marker.DELETE}
    assert deletes == {("instances", 1), ("labels", 1)} and len(second.markers) == 4
    # No depth for a frame: nothing located, so what was shown goes, under the colour header.
    missing = result([located(2, "mug", (0, 0, 0), (0, 0, 0), (0, 0, 0), status=0)], InstanceSegmentation.DEPTH_MISSING)
    gone = frame_markers(missing, shown)
    assert {(m.ns, m.id, m.action) for m in gone.markers} == {("instances", 2, Marker.DELETE), ("labels", 2, Marker.DELETE)}
    assert gone.markers[0].header.frame_id == "colour_optical"
    assert frame_markers(missing, shown) is None  # nothing to add or delete: nothing published
    # No subscriber for a while: a new one starts from nothing (no DELETE of what it never got).
    frame_markers(result([cup]), shown)
    shown.forget()
    assert all(m.action == Marker.ADD for m in frame_markers(result([mug]), shown).markers)


def test_the_markers_show_what_the_result_says():
    """The layout reads a result's locations as they are (no second geometry)."""
    cup = located(3, "cup", (0.1, 0.2, 0.9), (0.1, 0.21, 0.92), (0.05, 0.06, 0.07))
    (got,) = located_instances(result([cup]))
    assert got == LocatedInstance(3, "cup", (0.1, 0.21, 0.92), (0.05, 0.06, 0.07), got.distance)
    assert got.distance == pytest.approx(math.sqrt(0.01 + 0.04 + 0.81), abs=1e-12)
