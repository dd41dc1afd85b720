"""One camera's depth input and its 3-D step, as the node runs it.

The subscriptions' callbacks only store messages (`on_depth` queues the depth image undecoded,
`on_camera_info` keeps the latest CameraInfo); everything else runs in the inference worker,
after the model, on the masks it produced (`locate`): pairing by stamp, decoding and checking
the depth image and its CameraInfo, sampling the masks onto the depth grid and the robust
statistics. Each colour frame gets exactly one outcome, counted per cause in /diagnostics:

  paired                 3-D computed (each instance then has its own status)
  no_depth, depth_late, depth_early, depth_unmatched     no partner in time (depth_pairing)
  depth_encoding         the partner is not 16UC1/32FC1 (or not compressedDepth png)
  depth_malformed        its sizes, step or data do not add up, or it does not decode
  no_camera_info         nothing received on depth/camera_info yet
  camera_info_malformed  K all zeros or not a camera matrix, no image size, ...
  resolution_mismatch    depth and colour (or depth and its CameraInfo) differ in aspect ratio

Resolution: depth of another size than colour is used when both have the same aspect ratio
(within a pixel): each depth pixel takes the mask value of the colour pixel under its centre,
and the depth image's own intrinsics (CameraInfo's K, scaled when CameraInfo describes another
size) back-project it. Depth is never interpolated, so no point is invented between readings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instructsam_ros.depth.conversions import (
    camera_info_intrinsics,
    compressed_depth_to_array,
    depth_image_to_array,
    has_distortion,
)
from instructsam_ros.depth.geometry import (
    BadDepthError,
    DepthGrid,
    DepthSettings,
    InstanceLocation,
    Intrinsics,
    depth_intrinsics,
    locate_instances,
    pack_points,
)
from instructsam_ros.depth.pairing import PAIRED, DepthQueue, Pairing

# InstanceSegmentation.depth_status (msg/InstanceSegmentation.msg).
DEPTH_DISABLED = 0
DEPTH_OK = 1
DEPTH_MISSING = 2
DEPTH_REJECTED = 3

NO_CAMERA_INFO = "no_camera_info"
# Every per-frame outcome, in the order /diagnostics lists them.
OUTCOMES = (PAIRED, "no_depth", "depth_late", "depth_early", "depth_unmatched", "depth_encoding", "depth_malformed",
            NO_CAMERA_INFO, "camera_info_malformed", "resolution_mismatch")


@dataclass
class DepthResult:
    """The 3-D part of one colour frame."""

    status: int
    outcome: str
    problem: str = ""
    header: Any = None  # the depth image's std_msgs/Header when one was paired
    locations: list[InstanceLocation] | None = None
    cloud: np.ndarray | None = None  # depth_geometry.POINT_DTYPE points, when asked for
    warnings: list[str] = field(default_factory=list)  # one-time notes for the log
    latency: float = 0.0  # seconds the whole 3-D step took (set by the caller)


class DepthInput:
    """Depth images and CameraInfo of one camera, paired with its colour frames by stamp."""

    def __init__(self, queue_size: int = 10, silence_s: float = 1.0) -> None:
        self.queue = DepthQueue(queue_size, silence_s)
        self._camera_info = None
        self._checked_info: tuple[Any, Intrinsics | BadDepthError] | None = None
        self._grid: DepthGrid | None = None
        self._distortion_noted = False

    # -------------------------------------------------------------- callbacks (executor threads)
    def on_depth(self, msg) -> None:
        stamp = msg.header.stamp
        self.queue.add(int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec), msg)

    def on_camera_info(self, msg) -> None:
        self._camera_info = msg

    def clear(self) -> None:
        self.queue.clear()

    # -------------------------------------------------------------- worker
    def nearest(self, stamp_ns: int):
        """The queued depth image nearest to a colour frame arriving now (held until its 3-D step)."""
        return self.queue.nearest(stamp_ns)

    def pair(self, stamp_ns: int, tolerance_s: float, held=None) -> Pairing:
        return self.queue.match(stamp_ns, tolerance_s, held)

    def _intrinsics(self) -> Intrinsics:
        info = self._camera_info
        if info is None:
            raise BadDepthError("no CameraInfo received on the depth camera_info topic", NO_CAMERA_INFO)
        checked = self._checked_info
        if checked is None or checked[0] is not info:
            try:
                result: Intrinsics | BadDepthError = camera_info_intrinsics(info)
            except BadDepthError as error:
                result = error
            self._checked_info = checked = (info, result)
        if isinstance(checked[1], BadDepthError):
            raise checked[1]
        return checked[1]

    def locate(self, pairing: Pairing, colour_size: tuple[int, int], masks, boxes, ids, settings: DepthSettings,
               max_pixels: int, want_points: bool) -> DepthResult:
        """The 3-D step of one frame: `masks`/`boxes` in the colour grid (`colour_size` = (width,
        height)), `pairing` the frame's depth partner (or why there is none)."""
        if not pairing.paired:
            return DepthResult(DEPTH_MISSING, pairing.outcome, pairing.problem)
        msg = pairing.item
        warnings: list[str] = []
        try:
            if hasattr(msg, "format"):
                depth, scale = compressed_depth_to_array(msg, max_pixels)
            else:
                depth, scale = depth_image_to_array(msg, max_pixels)
            height, width = depth.shape
            intrinsics = depth_intrinsics(self._intrinsics(), width, height)
            grid = self._grid
            if grid is None or grid.colour_size != tuple(colour_size) or grid.depth_size != (width, height):
                grid = self._grid = DepthGrid(colour_size[0], colour_size[1], width, height)
        except BadDepthError as error:
            return DepthResult(DEPTH_REJECTED, error.kind, str(error), header=msg.header)
        if not self._distortion_noted and self._camera_info is not None and has_distortion(self._camera_info):
            self._distortion_noted = True
            warnings.append("the depth CameraInfo lists distortion coefficients; 3-D uses K only, so the depth image "
                            "must be rectified (aligned depth topics are)")
        locations = locate_instances(depth, scale, intrinsics, colour_size, masks, boxes, settings,
                                     keep_points=want_points, grid=grid)
        cloud = pack_points(locations, ids) if want_points else None
        return DepthResult(DEPTH_OK, PAIRED, header=msg.header, locations=locations, cloud=cloud, warnings=warnings)


def apply_depth(segmentation, result: DepthResult | None) -> None:
    """Fill an InstanceSegmentation's depth fields and every Instance.location from a result
    (None: the node takes no depth input, DEPTH_DISABLED)."""
    from instructsam_ros.depth.conversions import fill_location

    if result is None:
        segmentation.depth_status = DEPTH_DISABLED
        return
    segmentation.depth_status = int(result.status)
    segmentation.depth_problem = result.problem
    if result.header is not None:
        segmentation.depth_header = result.header
    if result.locations is not None:
        if len(result.locations) != len(segmentation.instances):
            raise ValueError(f"{len(result.locations)} locations for {len(segmentation.instances)} instances")
        for instance, location in zip(segmentation.instances, result.locations):
            fill_location(instance.location, location)
