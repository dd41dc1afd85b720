"""Depth input and 3-D output at the ROS boundary: depth images and CameraInfo in, validated;
Instance3D fields and the instances' PointCloud2 out.

Every check a malformed depth message can fail raises `BadDepthError` with a one-line reason and
a `kind` the node counts per cause in /diagnostics (depth_encoding, depth_malformed,
camera_info_malformed, resolution_mismatch). Decoding only reads message fields, so rosbags'
message classes work as well as rclpy's; rclpy classes are imported where a message is built.

Depth images: sensor_msgs/Image 16UC1 (millimetres) or 32FC1 (metres), either byte order, row
padding allowed; sensor_msgs/CompressedImage from image_transport's compressedDepth plugin
(format "16UC1; compressedDepth png" or "32FC1; compressedDepth png": a 12-byte header, then a
16-bit PNG of millimetres, or of quantised inverse depth for 32FC1). Its RVL variant is refused
by name.
"""
from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image as PILImage

from instructsam_ros.depth.geometry import (
    DEPTH_SCALES,
    POINT_DTYPE,
    BadDepthError,
    InstanceLocation,
    Intrinsics,
    intrinsics_from_k,
)

if TYPE_CHECKING:
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
    from std_msgs.msg import Header

    from instructsam_ros.msg import Instance3D

# compressedDepth's header: int32 compression format, float32 depthQuantA, float32 depthQuantB.
COMPRESSED_DEPTH_HEADER = struct.Struct("<iff")
MAX_COMPRESSED_BYTES = 64 * 1024 * 1024
_BYTES = {"16UC1": 2, "32FC1": 4}
_DTYPES = {"16UC1": "u2", "32FC1": "f4"}


def stamp_ns(stamp) -> int:
    """A builtin_interfaces/Time as integer nanoseconds (what pairing compares)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise BadDepthError(f"empty depth image ({width}x{height})", "depth_malformed")
    if height * width > max_pixels:
        raise BadDepthError(f"depth image {width}x{height} has more than max_input_pixels={max_pixels} pixels",
                            "depth_malformed")


def _depth_encoding(name: str, what: str) -> str:
    encoding = name.strip().upper()
    if encoding not in DEPTH_SCALES:
        raise BadDepthError(f"{what} encoding {name!r} is not a depth encoding: expected 16UC1 (millimetres) or "
                            "32FC1 (metres)", "depth_encoding")
    return encoding


def depth_image_to_array(msg: Image, max_pixels: int) -> tuple[np.ndarray, float]:
    """(HxW raw readings, factor to metres) of a 16UC1 or 32FC1 sensor_msgs/Image.

    The array is a view of the message buffer when the data is little-endian (no copy).
    """
    encoding = _depth_encoding(msg.encoding, "depth image")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(height, width, max_pixels)
    row_bytes = width * _BYTES[encoding]
    if step < row_bytes:
        raise BadDepthError(f"depth image step {step} is shorter than a row of {width} {encoding} pixels "
                            f"({row_bytes} bytes)", "depth_malformed")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * height:
        raise BadDepthError(f"depth image data has {data.size} bytes, expected step x height = {step} x {height} = "
                            f"{step * height}", "depth_malformed")
    if step % _BYTES[encoding]:
        raise BadDepthError(f"depth image step {step} is not a whole number of {encoding} pixels", "depth_malformed")
    dtype = np.dtype(_DTYPES[encoding]).newbyteorder(">" if msg.is_bigendian else "<")
    rows = data.reshape(height, step).view(dtype)[:, :width]
    if not rows.dtype.isnative:
        rows = rows.astype(rows.dtype.newbyteorder("="))
    return rows, DEPTH_SCALES[encoding]


def compressed_depth_to_array(msg: CompressedImage, max_pixels: int) -> tuple[np.ndarray, float]:
    """(HxW raw readings, factor to metres) of a compressedDepth sensor_msgs/CompressedImage."""
    fmt = msg.format or ""
    encoding_part, _, codec = fmt.partition(";")
    codec = codec.strip().lower()
    if not codec.startswith("compresseddepth"):
        raise BadDepthError(f"compressed depth format {fmt!r} is not image_transport's compressedDepth "
                            "(e.g. '16UC1; compressedDepth png')", "depth_encoding")
    if codec not in ("compresseddepth", "compresseddepth png"):
        raise BadDepthError(f"compressed depth format {fmt!r} is not supported: only compressedDepth png "
                            "(the plugin's default)", "depth_encoding")
    encoding = _depth_encoding(encoding_part, "compressed depth")
    size = len(msg.data)
    if size <= COMPRESSED_DEPTH_HEADER.size:
        raise BadDepthError(f"compressed depth image has {size} bytes: no room for its header and PNG", "depth_malformed")
    if size > MAX_COMPRESSED_BYTES:
        raise BadDepthError(f"compressed depth image of {size} bytes exceeds {MAX_COMPRESSED_BYTES} bytes", "depth_malformed")
    payload = np.frombuffer(msg.data, dtype=np.uint8)
    _, quant_a, quant_b = COMPRESSED_DEPTH_HEADER.unpack(payload[:COMPRESSED_DEPTH_HEADER.size].tobytes())
    png = payload[COMPRESSED_DEPTH_HEADER.size:]
    # Read the size from the PNG header before decoding: a small PNG can hold a huge image.
    try:
        with PILImage.open(io.BytesIO(png.tobytes())) as probe:
            width, height = probe.size
    except (OSError, ValueError, PILImage.DecompressionBombError) as error:
        raise BadDepthError(f"compressed depth image could not be decoded: {error}", "depth_malformed") from error
    _check_size(height, width, max_pixels)
    decoded = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.ndim != 2 or decoded.dtype != np.uint16:
        got = "nothing" if decoded is None else f"{decoded.dtype} with shape {decoded.shape}"
        raise BadDepthError(f"compressed depth PNG decoded to {got}, expected one 16-bit channel", "depth_malformed")
    if encoding == "16UC1":
        return decoded, DEPTH_SCALES["16UC1"]
    if not (math.isfinite(quant_a) and math.isfinite(quant_b)) or quant_a == 0:
        raise BadDepthError(f"compressed 32FC1 depth has unusable quantisation parameters ({quant_a}, {quant_b})",
                            "depth_malformed")
    # Inverse-depth quantisation (the plugin's INV_DEPTH): depth = A / (q - B), q = 0 is no reading.
    quantised = decoded.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        metres = np.float32(quant_a) / (quantised - np.float32(quant_b))
    metres[decoded == 0] = np.nan
    return metres, 1.0


def camera_info_intrinsics(msg: CameraInfo) -> Intrinsics:
    """Validated intrinsics of a sensor_msgs/CameraInfo (its K, size, and region of interest).

    A set ROI means the image is that crop of the calibrated one: the principal point moves by
    its offset and the size becomes the ROI's. Binning needs no special case: the image is then
    smaller than width x height in the same aspect ratio, and the intrinsics are scaled to it.
    """
    intrinsics = intrinsics_from_k(msg.k, msg.width, msg.height)
    roi = msg.roi
    if roi.width and roi.height and (roi.width, roi.height) != (intrinsics.width, intrinsics.height):
        intrinsics = Intrinsics(intrinsics.fx, intrinsics.fy, intrinsics.cx - roi.x_offset, intrinsics.cy - roi.y_offset,
                                int(roi.width), int(roi.height), intrinsics.skew)
    return intrinsics


def has_distortion(msg: CameraInfo) -> bool:
    """True when the CameraInfo lists non-zero distortion coefficients (the node does not undistort)."""
    return any(float(v) != 0.0 for v in msg.d)


def fill_location(target: Instance3D, location: InstanceLocation | None) -> Instance3D:
    """Set an Instance3D from a geometry result (None: NO_DEPTH, everything zero)."""
    if location is None:
        target.status = 0
        return target
    target.status = int(location.status)
    target.mask_pixels = int(location.mask_pixels)
    target.valid_pixels = int(location.valid_pixels)
    target.inlier_pixels = int(location.inlier_pixels)
    if location.center is not None:
        target.center.x, target.center.y, target.center.z = (float(v) for v in location.center)
        target.box_center.x, target.box_center.y, target.box_center.z = (float(v) for v in location.box_center)
        target.box_size.x, target.box_size.y, target.box_size.z = (float(v) for v in location.box_size)
    return target


def point_cloud_msg(cloud: np.ndarray, header: Header) -> PointCloud2:
    """An unorganised PointCloud2 (height 1) of `geometry.pack_points` output: fields x, y,
    z (float32) and instance_id (uint32), little-endian, 16 bytes a point."""
    from sensor_msgs.msg import PointCloud2, PointField

    if cloud.dtype != POINT_DTYPE:
        raise ValueError(f"cloud has dtype {cloud.dtype}, expected {POINT_DTYPE}")
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, int(cloud.size)
    msg.fields = [
        PointField(name=name, offset=POINT_DTYPE.fields[name][1], datatype=datatype, count=1)
        for name, datatype in (("x", PointField.FLOAT32), ("y", PointField.FLOAT32), ("z", PointField.FLOAT32),
                               ("instance_id", PointField.UINT32))
    ]
    msg.is_bigendian = False
    msg.point_step = POINT_DTYPE.itemsize
    msg.row_step = POINT_DTYPE.itemsize * int(cloud.size)
    msg.is_dense = True  # only valid readings are ever packed
    msg.data = cloud.tobytes()
    return msg


def cloud_msg_to_array(msg: PointCloud2) -> np.ndarray:
    """The structured points of a cloud written by `point_cloud_msg` (for clients and tests)."""
    names = [field.name for field in msg.fields]
    if names != list(POINT_DTYPE.names) or msg.point_step != POINT_DTYPE.itemsize:
        raise ValueError(f"cloud fields {names} (point_step {msg.point_step}) are not x, y, z, instance_id")
    return np.frombuffer(bytes(msg.data), POINT_DTYPE).copy()


def encode_compressed_depth(depth: np.ndarray, encoding: str, depth_max: float = 10.0,
                            depth_quantization: float = 100.0) -> tuple[str, bytes]:
    """(format, data) as image_transport's compressedDepth png writes them, for publishers
    without that plugin (the demo, tests): 16UC1 uint16 millimetres as they are, 32FC1 metres
    as quantised inverse depth (readings at or beyond `depth_max`, and NaN, become 0)."""
    encoding = _depth_encoding(encoding, "depth")
    if encoding == "16UC1":
        pixels = np.asarray(depth, dtype=np.uint16)
        header = COMPRESSED_DEPTH_HEADER.pack(0, 0.0, 0.0)
    else:
        quant_a = np.float32(depth_quantization * (depth_quantization + 1.0))
        quant_b = np.float32(1.0 - quant_a / np.float32(depth_max))
        values = np.asarray(depth, dtype=np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            quantised = quant_a / values + quant_b
        keep = np.isfinite(values) & (values < depth_max) & (values > 0)
        pixels = np.where(keep, np.clip(quantised, 0, 65535), 0).astype(np.uint16)
        header = COMPRESSED_DEPTH_HEADER.pack(0, float(quant_a), float(quant_b))
    ok, png = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError("PNG encoding failed")
    return f"{encoding}; compressedDepth png", header + png.tobytes()


def locations_summary(locations: Sequence[InstanceLocation]) -> str:
    """'3 located, 1 with too few valid pixels' (for logs)."""
    located = sum(1 for loc in locations if loc.center is not None)
    few = len(locations) - located
    return f"{located} located" + (f", {few} with too few valid depth pixels" if few else "")
