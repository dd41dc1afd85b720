"""Our messages as rosbags sees them: the typestore with msg/ registered, and message builders.

`instructsam annotate-bag` writes bags without a ROS installation, so it cannot use the rclpy
classes that colcon generates. rosbags serialises messages itself from their definitions; we
register the package's own `msg/*.msg` files (not a copy of them), so a recorded
`InstanceSegmentation` has exactly the layout and type hash (RIHS01) of the generated one and
any ROS 2 tool reads the bag. The standard types (Header, Image, RegionOfInterest) come from
rosbags' Jazzy store; they are identical in Humble, Jazzy and Kilted. A recording has no depth,
so every instance's 3-D location is NO_DEPTH and every frame's depth_status DEPTH_DISABLED.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from rosbags.typesys import Stores, TypesysError, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from instructsam_core.errors import UserError

PACKAGE = "instructsam_ros"
SEGMENTATION_TYPE = f"{PACKAGE}/msg/InstanceSegmentation"
INSTANCE_TYPE = f"{PACKAGE}/msg/Instance"
INSTANCE_3D_TYPE = f"{PACKAGE}/msg/Instance3D"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
REQUIRED_MESSAGES = ("Instance", "Instance3D", "InstanceSegmentation")

_ENCODINGS = {"mono8": (np.uint8, 1), "mono16": (np.dtype("<u2"), 1), "rgb8": (np.uint8, 3)}


def message_dirs() -> list[Path]:
    """Where the package's .msg files may be, most specific first.

    A source checkout (or editable install) has them next to the package; `pip install` puts
    them under `<prefix>/share/instructsam_ros/msg`; a colcon install space under
    `share/instructsam_ros/msg` of an AMENT_PREFIX_PATH entry.
    """
    from instructsam_ros import generated_install_dir

    candidates = [Path(__file__).resolve().parents[2] / "msg", Path(sys.prefix) / "share" / PACKAGE / "msg"]
    prefix = generated_install_dir()
    if prefix is not None:
        candidates.append(prefix / "share" / PACKAGE / "msg")
    for entry in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if entry:
            candidates.append(Path(entry) / "share" / PACKAGE / "msg")
    return candidates


def find_message_dir() -> Path:
    for directory in message_dirs():
        if all((directory / f"{name}.msg").is_file() for name in REQUIRED_MESSAGES):
            return directory
    searched = ", ".join(str(d) for d in message_dirs())
    raise UserError(f"the {PACKAGE} message definitions (msg/*.msg) were not found (looked in {searched})")


def build_typestore(message_dir: Path | None = None) -> Typestore:
    """rosbags' Jazzy typestore plus every `.msg` file of the package."""
    directory = find_message_dir() if message_dir is None else message_dir
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    try:
        for path in sorted(directory.glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"{PACKAGE}/msg/{path.stem}"))
        store.register(types)
    except (OSError, TypesysError) as error:
        raise UserError(f"cannot register the message definitions in {directory}: {error}") from None
    return store


class BagMessages:
    """Builds and serialises our output messages as rosbags dataclasses of one typestore."""

    def __init__(self, store: Typestore) -> None:
        self.store = store
        types = store.types
        self.Time = types["builtin_interfaces/msg/Time"]
        self.Header = types["std_msgs/msg/Header"]
        self.Image = types[IMAGE_TYPE]
        self.RegionOfInterest = types["sensor_msgs/msg/RegionOfInterest"]
        self.Point = types["geometry_msgs/msg/Point"]
        self.Vector3 = types["geometry_msgs/msg/Vector3"]
        self.Instance = types[INSTANCE_TYPE]
        self.Instance3D = types[INSTANCE_3D_TYPE]
        self.InstanceSegmentation = types[SEGMENTATION_TYPE]

    def header(self, sec: int, nanosec: int, frame_id: str):
        return self.Header(stamp=self.Time(sec=int(sec), nanosec=int(nanosec)), frame_id=frame_id)

    def image(self, pixels: np.ndarray, encoding: str, header):
        """An unpadded little-endian Image of an HxW (mono) or HxWx3 (rgb8) array."""
        dtype, channels = _ENCODINGS[encoding]
        pixels = np.ascontiguousarray(pixels, dtype=dtype)
        expected_ndim = 2 if channels == 1 else 3
        if pixels.ndim != expected_ndim:
            raise ValueError(f"{encoding} needs a {expected_ndim}-D array, got shape {pixels.shape}")
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        step = width * channels * np.dtype(dtype).itemsize
        return self.Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                          step=step, data=pixels.reshape(-1).view(np.uint8))

    def instance(self, instance_id: int, phrase: str, phrase_index: int, score: float,
                 box: tuple[int, int, int, int], crop: np.ndarray, header):
        """One Instance message; `crop` is the mono8 mask cut to `box` (mask_layout.crop_mask)."""
        x0, y0, x1, y1 = box
        roi = self.RegionOfInterest(x_offset=x0, y_offset=y0, height=y1 - y0, width=x1 - x0, do_rectify=False)
        return self.Instance(id=int(instance_id), phrase=phrase, phrase_index=int(phrase_index), score=float(score),
                             box=roi, mask=self.image(crop, "mono8", header), area=int(np.count_nonzero(crop)),
                             location=self.no_location())

    def no_location(self):
        """The 3-D location of an instance without depth (status NO_DEPTH, every value zero)."""
        return self.Instance3D(status=0, center=self.Point(x=0.0, y=0.0, z=0.0), box_center=self.Point(x=0.0, y=0.0, z=0.0),
                               box_size=self.Vector3(x=0.0, y=0.0, z=0.0), mask_pixels=0, valid_pixels=0, inlier_pixels=0)

    def segmentation(self, header, height: int, width: int, instruction: str, phrases: list[str], instances: list):
        """The frame's InstanceSegmentation. Offline there is one instruction (id 1) and the
        latencies are 0: real timings would make two runs of the same command differ."""
        return self.InstanceSegmentation(header=header, height=int(height), width=int(width), instruction=instruction,
                                         instruction_id=1, phrases=list(phrases), instances=instances,
                                         model_latency=0.0, processing_latency=0.0, depth_status=0, depth_problem="",
                                         depth_header=self.header(0, 0, ""), depth_latency=0.0)

    def serialize(self, message) -> memoryview:
        return self.store.serialize_cdr(message, message.__msgtype__)
