"""A frame's located instances as visualization_msgs/MarkerArray (`instance_markers`), for the
3-D views of RViz and Foxglove.

Read from the published InstanceSegmentation (its instances' `location`), so the markers show
exactly what the result says; what is drawn and when it is deleted is `marker_layout`. The
markers carry the depth image's header (`depth_header`: its frame is the frame of every
location, its stamp when the depth was measured); a frame without depth only deletes, under the
colour image's header.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from instructsam_ros.interfaces import Instance3D, InstanceSegmentation
from instructsam_ros.messages.marker_layout import ADD, BOX, LocatedInstance, MarkerSet, MarkerSpec


def located_instances(segmentation: InstanceSegmentation) -> list[LocatedInstance]:
    """The instances of a result that have a 3-D location (Instance3D status OK)."""
    located = []
    for instance in segmentation.instances:
        location = instance.location
        if location.status != Instance3D.OK:
            continue
        center, box_center, box_size = location.center, location.box_center, location.box_size
        located.append(LocatedInstance(
            int(instance.id), instance.phrase, (box_center.x, box_center.y, box_center.z),
            (box_size.x, box_size.y, box_size.z), math.hypot(center.x, center.y, center.z)))
    return located


def marker_msg(spec: MarkerSpec, header) -> Marker:
    marker = Marker(header=header, ns=spec.namespace, id=int(spec.id))
    if spec.action != ADD:
        marker.action = Marker.DELETE
        return marker
    marker.action = Marker.ADD
    marker.type = Marker.CUBE if spec.kind == BOX else Marker.TEXT_VIEW_FACING
    marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = spec.position
    marker.pose.orientation.w = 1.0
    marker.scale.x, marker.scale.y, marker.scale.z = spec.scale
    marker.color = ColorRGBA(r=spec.rgba[0], g=spec.rgba[1], b=spec.rgba[2], a=spec.rgba[3])
    marker.text = spec.text
    return marker


def marker_array(specs: Sequence[MarkerSpec], header) -> MarkerArray:
    return MarkerArray(markers=[marker_msg(spec, header) for spec in specs])


def frame_markers(segmentation: InstanceSegmentation, shown: MarkerSet) -> MarkerArray | None:
    """The MarkerArray of one result (with its 3-D part filled), or None when there is nothing
    to add or delete; `shown` is the camera's marker state, updated."""
    specs = shown.update(located_instances(segmentation))
    if not specs:
        return None
    paired = segmentation.depth_status == InstanceSegmentation.DEPTH_OK
    return marker_array(specs, segmentation.depth_header if paired else segmentation.header)
