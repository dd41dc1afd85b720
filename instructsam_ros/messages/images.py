"""sensor_msgs images <-> numpy arrays, validated at the boundary.

Incoming frames are external input: every check a malformed message can fail (unknown
encoding, data length not matching step x height, rows shorter than the pixels they claim,
zero or oversized images, undecodable compressed data) raises `BadImageError` with a one-line
reason, so the node can drop the frame, count it and keep running.

Decoding goes through rosbags-image (any common encoding; zero-copy for packed rgb8).
Outgoing images are filled from bytes in one copy (element-wise filling costs ~50 ms at VGA).

Decoding only reads message fields, so rosbags' message classes work as well as rclpy's:
`instructsam annotate-bag` decodes recorded frames with these functions and no ROS
installation. rclpy's classes are imported only where an outgoing message is built.
"""
from __future__ import annotations

import array
import io
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image as PILImage
from rosbags.image import ImageError, compressed_image_to_cvimage, image_to_cvimage

from instructsam_core.errors import UserError

if TYPE_CHECKING:
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

# Encodings decoded to RGB: (bytes per pixel, channels). nv12/nv21 are left out on purpose:
# their planes do not fit the height x step layout the other encodings share.
SUPPORTED_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 3),
    "bgr8": (3, 3),
    "rgba8": (4, 4),
    "bgra8": (4, 4),
    "mono8": (1, 1),
    "mono16": (2, 1),
    "rgb16": (6, 3),
    "bgr16": (6, 3),
    "rgba16": (8, 4),
    "bgra16": (8, 4),
    "yuv422": (2, 2),
    "uyvy": (2, 2),
    "yuyv": (2, 2),
    "yuv422_yuy2": (2, 2),
    "bayer_rggb8": (1, 1),
    "bayer_bggr8": (1, 1),
    "bayer_gbrg8": (1, 1),
    "bayer_grbg8": (1, 1),
    "bayer_rggb16": (2, 1),
    "bayer_bggr16": (2, 1),
    "bayer_gbrg16": (2, 1),
    "bayer_grbg16": (2, 1),
}

# OpenCV's generic 8-bit types, read as cv_bridge reads them: `imgmsg_to_cv2` passes them through
# as an OpenCV image of 1, 3 or 4 channels, which OpenCV (and cv_bridge's cvtColorForDisplay)
# takes as mono, BGR or BGRA. Drivers and tools that publish a cv::Mat by its type write these.
GENERIC_ENCODINGS: dict[str, str] = {"8uc1": "mono8", "8uc3": "bgr8", "8uc4": "bgra8"}

# Compressed payloads larger than this are refused before decoding (a 16 MB JPEG/PNG is far
# beyond any camera stream; decoding it could allocate gigabytes).
MAX_COMPRESSED_BYTES = 64 * 1024 * 1024


# Encodings of compressed formats: a raw sensor_msgs/Image claiming one of these carries a
# compressed payload that belongs in a sensor_msgs/CompressedImage.
COMPRESSED_FORMATS = frozenset({"jpeg", "jpg", "png", "tiff", "webp", "bmp"})


class BadImageError(UserError):
    """A frame that cannot be used; the message names the problem in one line.

    `kind` names the rule the frame broke (e.g. "short_data"), so that reports can be grouped
    and rate-limited per reason without parsing the message.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# The model's image branch (Qwen-VL's smart resize) refuses frames whose long side is more than
# 200 times the short one; such a frame is refused here with that reason instead of failing
# inside the model (in a batch of several cameras it would fail the others' frames too).
MAX_ASPECT_RATIO = 200


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise BadImageError(f"empty image ({width}x{height})", "empty_image")
    if height * width > max_pixels:
        raise BadImageError(
            f"image {width}x{height} has {height * width} pixels, more than max_input_pixels={max_pixels}",
            "too_many_pixels",
        )
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise BadImageError(
            f"image {width}x{height} is more than {MAX_ASPECT_RATIO} times as long as it is wide (the model's limit)",
            "aspect_ratio",
        )


class _PackedImage:
    """The fields rosbags-image reads, for rows copied out of a padded message."""

    __slots__ = ("height", "width", "encoding", "is_bigendian", "data")

    def __init__(self, height: int, width: int, encoding: str, is_bigendian: int, data: np.ndarray):
        self.height = height
        self.width = width
        self.encoding = encoding
        self.is_bigendian = is_bigendian
        self.data = data


def image_msg_to_rgb(msg: Image, max_pixels: int) -> np.ndarray:
    """Decode a `sensor_msgs/Image` of any supported encoding to an HxWx3 uint8 RGB array.

    For packed rgb8 the result is a zero-copy view of the message buffer. 8UC1, 8UC3 and 8UC4
    are read as mono8, bgr8 and bgra8 (`GENERIC_ENCODINGS`).
    """
    encoding = msg.encoding.strip().lower()
    if not encoding:
        raise BadImageError("image has no encoding (set Image.encoding, e.g. 'rgb8')", "no_encoding")
    if encoding in COMPRESSED_FORMATS:
        raise BadImageError(
            f"encoding {msg.encoding!r} is a compressed format: send it as sensor_msgs/CompressedImage "
            "on image/compressed with use_compressed:=true",
            "compressed_in_raw_image",
        )
    layout = GENERIC_ENCODINGS.get(encoding, encoding)  # the encoding whose pixel layout it has
    if layout not in SUPPORTED_ENCODINGS:
        supported = ", ".join([*sorted(SUPPORTED_ENCODINGS), *(name.upper() for name in GENERIC_ENCODINGS)])
        raise BadImageError(f"unsupported encoding {msg.encoding!r} (supported: {supported})", "unsupported_encoding")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(height, width, max_pixels)
    pixel_bytes, _ = SUPPORTED_ENCODINGS[layout]
    row_bytes = width * pixel_bytes
    if encoding in ("yuv422", "uyvy", "yuyv", "yuv422_yuy2") and width % 2:
        raise BadImageError(f"{encoding} needs an even width, got {width}", "odd_width")
    if step < row_bytes:
        raise BadImageError(
            f"step {step} is shorter than a row of {width} {encoding} pixels ({row_bytes} bytes)", "short_step"
        )
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * height:
        raise BadImageError(
            f"data has {data.size} bytes, expected step x height = {step} x {height} = {step * height}", "data_size"
        )
    if step != row_bytes:
        # Drop the row padding so rosbags-image sees packed rows.
        data = np.ascontiguousarray(data.reshape(height, step)[:, :row_bytes]).reshape(-1)
    packed = _PackedImage(height, width, layout, int(msg.is_bigendian), data)
    try:
        rgb = image_to_cvimage(packed, "rgb8")
    except (ImageError, cv2.error, ValueError, TypeError) as error:
        raise BadImageError(f"cannot convert {encoding} to rgb8: {error}", "conversion_failed") from error
    return _as_rgb8(rgb, height, width)


def compressed_msg_to_rgb(msg: CompressedImage, max_pixels: int) -> np.ndarray:
    """Decode a `sensor_msgs/CompressedImage` (JPEG, PNG, ...) to an HxWx3 uint8 RGB array."""
    size = len(msg.data)
    if size == 0:
        raise BadImageError("compressed image has no data", "compressed_empty")
    if size > MAX_COMPRESSED_BYTES:
        raise BadImageError(f"compressed image of {size} bytes exceeds {MAX_COMPRESSED_BYTES} bytes", "compressed_too_large")
    # Read the size from the header before decoding: a small PNG can hold a huge image.
    try:
        with PILImage.open(io.BytesIO(memoryview(msg.data))) as probe:
            width, height = probe.size
    except (OSError, ValueError, PILImage.DecompressionBombError) as error:
        raise BadImageError(
            f"compressed image ({msg.format or 'no format'}) could not be decoded: {error}", "undecodable"
        ) from error
    _check_size(height, width, max_pixels)
    try:
        decoded = compressed_image_to_cvimage(msg, None)
    except (ImageError, cv2.error, AssertionError) as error:
        raise BadImageError(f"compressed image ({msg.format or 'no format'}) could not be decoded", "undecodable") from error
    if decoded is None:
        raise BadImageError(f"compressed image ({msg.format or 'no format'}) could not be decoded", "undecodable")
    if decoded.dtype == np.uint16:
        decoded = (decoded / 257.0).round().astype(np.uint8)
    if decoded.ndim == 2:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    elif decoded.shape[2] == 4:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    else:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return rgb


def _as_rgb8(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """rosbags returns 16-bit data for 16-bit encodings and a 2-D array for mono: normalise."""
    if rgb.dtype != np.uint8:
        rgb = (rgb.astype(np.float32) / 257.0).round().clip(0, 255).astype(np.uint8)
    if rgb.ndim == 2:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    if rgb.shape != (height, width, 3):
        raise BadImageError(f"decoded image has shape {rgb.shape}, expected {(height, width, 3)}", "conversion_failed")
    return rgb


def array_to_image_msg(pixels: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """Pack an array into a `sensor_msgs/Image` with one copy (little-endian, no padding).

    `encoding` must describe the array: rgb8/bgr8 for HxWx3 uint8, mono8 for HxW uint8,
    mono16 for HxW uint16.
    """
    expected = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "mono8": (np.uint8, 2), "mono16": (np.uint16, 2)}
    if encoding not in expected:
        raise ValueError(f"array_to_image_msg does not write {encoding!r}")
    from sensor_msgs.msg import Image  # noqa: F811 - rclpy only for outgoing messages (see module doc)

    dtype, ndim = expected[encoding]
    if pixels.dtype != dtype or pixels.ndim != ndim or (ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"{encoding} needs a {ndim}-D {np.dtype(dtype).name} array, got {pixels.dtype} {pixels.shape}")
    pixels = np.ascontiguousarray(pixels, dtype=np.dtype(dtype).newbyteorder("<"))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(pixels.strides[0]) if pixels.size else int(pixels.shape[1] * pixels.itemsize * (3 if ndim == 3 else 1))
    buffer = array.array("B")
    if pixels.size:
        buffer.frombytes(memoryview(pixels.reshape(-1).view(np.uint8)))  # one copy, no intermediate bytes
    msg.data = buffer
    return msg


def image_msg_to_array(msg: Image) -> np.ndarray:
    """Raw pixels of an rgb8, bgr8, mono8 or mono16 message as an array (for clients and tests)."""
    layouts = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "mono8": (np.uint8, 1), "mono16": (np.uint16, 1)}
    if msg.encoding not in layouts:
        raise BadImageError(f"image_msg_to_array reads rgb8, bgr8, mono8 or mono16, not {msg.encoding!r}", "unsupported_encoding")
    dtype, channels = layouts[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step) if msg.height else np.zeros((0, 0), np.uint8)
    row_bytes = msg.width * channels * dtype.itemsize
    pixels = np.ascontiguousarray(rows[:, :row_bytes]).view(dtype)
    shape = (msg.height, msg.width, channels) if channels > 1 else (msg.height, msg.width)
    return pixels.reshape(shape).astype(dtype.newbyteorder("="))
