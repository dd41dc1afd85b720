"""One camera's depth input and its 3-D step, as the node runs it.

The subscriptions' callbacks only store messages (`on_depth` queues the depth image undecoded,
`on_camera_info` keeps the latest CameraInfo); everything else runs in the inference worker,
after the model, on the masks it produced, in one call per frame (`locate_frame`): pairing by
stamp (pairing), decoding and checking the depth image and its CameraInfo (conversions),
sampling the masks onto the depth grid and the robust statistics (geometry), then the frame's
message filled and the point cloud built (conversions). The camera stream hands the masks over
once and gets the result back; nothing of the 3-D step calls back into the node. Each colour
frame gets exactly one outcome, counted per cause in /diagnostics:

  paired                 3-D computed (each instance then has its own status)
  no_depth, depth_late, depth_early, depth_unmatched     no partner in time (pairing)
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

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instructsam_ros.depth.conversions import (
    camera_info_intrinsics,
    compressed_depth_to_array,
    depth_image_to_array,
    fill_location,
    has_distortion,
    point_cloud_msg,
    stamp_ns,
)
from instructsam_ros.depth.geometry import OK as LOCATED
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
    cloud: np.ndarray | None = None  # geometry.POINT_DTYPE points, when asked for
    warnings: list[str] = field(default_factory=list)  # one-time notes for the log
    latency: float = 0.0  # seconds the whole 3-D step took (set by `locate_frame`)
    cloud_msg: Any = None  # sensor_msgs/PointCloud2 of `cloud` (built by `locate_frame`)

    @property
    def distances(self) -> list[float | None] | None:
        """Each instance's distance from the camera (None where it was not located), for the overlay."""
        if self.locations is None:
            return None
        return [loc.distance if loc.status == LOCATED else None for loc in self.locations]


@dataclass(frozen=True)
class DepthOptions:
    """What one frame's 3-D step is asked to do (the node maps its parameters to these)."""

    sync_tolerance: float  # seconds between colour and depth stamps (depth_sync_tolerance)
    queue_size: int  # depth images kept for pairing (depth_queue_size)
    max_pixels: int  # larger depth images are refused (max_input_pixels)
    geometry: DepthSettings
    want_points: bool  # build the point cloud (someone subscribes to instance_points)


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
        self.queue.add(stamp_ns(msg.header.stamp), msg)

    def on_camera_info(self, msg) -> None:
        self._camera_info = msg

    def clear(self) -> None:
        self.queue.clear()

    def hold(self, header) -> tuple[int, Any] | None:
        """The queued depth image nearest to a colour frame (its std_msgs/Header) arriving now,
        held by the frame until its 3-D step (image callback)."""
        return self.queue.nearest(stamp_ns(header.stamp))

    # -------------------------------------------------------------- worker
    def locate_frame(self, segmentation, colour_size: tuple[int, int], masks, boxes, ids, held: tuple[int, Any] | None,
                     options: DepthOptions) -> DepthResult:
        """The whole 3-D step of one colour frame, the node's one call into depth: pair the frame
        (`segmentation.header`, the colour image's) with a depth image, check and decode it,
        locate every instance (`masks`, `boxes` in the colour grid of `colour_size` = (width,
        height)), fill `segmentation`'s depth fields and every Instance.location, and build the
        point cloud when asked (`cloud_msg`). The colour result goes out whatever happens here:
        a failure of the step itself is the frame's outcome (depth_malformed)."""
        start = time.perf_counter()
        self.queue.resize_to(options.queue_size)
        pairing = self.pair(stamp_ns(segmentation.header.stamp), options.sync_tolerance, held)
        try:
            result = self.locate(pairing, colour_size, masks, boxes, ids, options.geometry, options.max_pixels,
                                 options.want_points)
        except Exception as error:  # noqa: BLE001 - the colour result goes out whatever the 3-D step does
            result = DepthResult(DEPTH_REJECTED, "depth_malformed", f"3-D step failed: {type(error).__name__}: {error}",
                                 header=getattr(pairing.item, "header", None))
        apply_depth(segmentation, result)
        if result.cloud is not None:
            result.cloud_msg = point_cloud_msg(result.cloud, result.header)
        # Everything 3-D costs this frame: pairing, checks, statistics, filling the message, the cloud.
        segmentation.depth_latency = result.latency = time.perf_counter() - start
        return result

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
