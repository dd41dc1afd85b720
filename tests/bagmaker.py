"""Small rosbag2 recordings for the annotate-bag tests, written with rosbags' own writer.

Frames are synthetic shape scenes (instructsam_core.synth) so the default model has something
to find; compressed topics use PNG, which is lossless, so the frame a test compares against is
exactly the array that was recorded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from instructsam_core import synth

STORE = get_typestore(Stores.ROS2_JAZZY)
TYPES = STORE.types
PLUGINS = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
BASE_NS = 1_700_000_000 * 10**9  # log time of the first message
PERIOD_NS = 10**9  # one frame per second per topic


@dataclass
class Recorded:
    """One recorded image message; `rgb` is None for a frame written with a bad encoding."""

    topic: str
    index: int
    log_time: int
    stamp: tuple[int, int]
    frame_id: str
    rgb: np.ndarray | None


def scenes(count: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [cv2.resize(synth.make_scene(rng).image, (width, height), interpolation=cv2.INTER_NEAREST)
            for _ in range(count)]


def first_scene_phrase(seed: int) -> str:
    """A category phrase ('green triangles') of an object in the first scene `scenes` draws."""
    scene = synth.make_scene(np.random.default_rng(seed))
    largest = max(scene.objects, key=lambda o: o.size)
    return f"{largest.color} {synth.PLURAL[largest.shape]}"


def _header(sec: int, nanosec: int, frame_id: str):
    return TYPES["std_msgs/msg/Header"](stamp=TYPES["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                        frame_id=frame_id)


def image_message(rgb: np.ndarray, header, encoding: str = "rgb8"):
    """An rgb8 Image; another `encoding` labels the same bytes wrongly (a frame to refuse)."""
    height, width = rgb.shape[:2]
    return TYPES["sensor_msgs/msg/Image"](header=header, height=height, width=width, encoding=encoding,
                                          is_bigendian=0, step=width * 3, data=rgb.reshape(-1))


def compressed_message(rgb: np.ndarray, header):
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return TYPES["sensor_msgs/msg/CompressedImage"](header=header, format="rgb8; png compressed bgr8",
                                                    data=png.reshape(-1))


def write_bag(
    path: Path,
    storage: str,
    topics: dict[str, str],
    frames: int,
    size: tuple[int, int] = (48, 64),
    seed: int = 0,
    bad: dict[str, set[int]] | None = None,
    garbage: dict[str, set[int]] | None = None,
    chatter: bool = True,
    version: int = 9,
) -> list[Recorded]:
    """A bag with `frames` images on each topic ("raw" or "compressed"), one second apart, plus
    a std_msgs/String topic between them. Frames listed in `bad` are written as nv12 (unsupported),
    those in `garbage` as bytes that are no CDR message at all. `version`: rosbags writes 8 or 9."""
    height, width = size
    bad, garbage = bad or {}, garbage or {}
    recorded: list[Recorded] = []
    with Writer(path, version=version, storage_plugin=PLUGINS[storage]) as writer:
        connections = {}
        for name, kind in topics.items():
            msgtype = "sensor_msgs/msg/Image" if kind == "raw" else "sensor_msgs/msg/CompressedImage"
            connections[name] = writer.add_connection(name, msgtype, typestore=STORE)
        talk = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=STORE) if chatter else None
        pictures = {name: scenes(frames, height, width, seed + k) for k, name in enumerate(topics)}
        for i in range(frames):
            for k, (name, kind) in enumerate(topics.items()):
                log_time = BASE_NS + i * PERIOD_NS + k * 1000
                stamp = (1000 + i, 1000 * k + 7)  # header stamps differ from log times on purpose
                frame_id = f"camera_{k}"
                header = _header(*stamp, frame_id)
                rgb = pictures[name][i]
                if i in garbage.get(name, set()):
                    writer.write(connections[name], log_time, b"\x00\x01\x00\x00\xff\xff\xff\xff not a message")
                    recorded.append(Recorded(name, i, log_time, stamp, frame_id, None))
                    continue
                if i in bad.get(name, set()):
                    msg, rgb = image_message(rgb, header, "nv12"), None
                elif kind == "raw":
                    msg = image_message(rgb, header)
                else:
                    msg = compressed_message(rgb, header)
                writer.write(connections[name], log_time, STORE.serialize_cdr(msg, msg.__msgtype__))
                recorded.append(Recorded(name, i, log_time, stamp, frame_id, rgb))
            if talk is not None:
                text = TYPES["std_msgs/msg/String"](data=f"hello {i}")
                writer.write(talk, BASE_NS + i * PERIOD_NS + 500_000, STORE.serialize_cdr(text, text.__msgtype__))
    return recorded


def _any_reader(path: Path) -> AnyReader:
    """rosbags' reader; our types for bags without stored definitions (Humble's sqlite3)."""
    from instructsam_ros.bags.types import build_typestore

    return AnyReader([path], default_typestore=build_typestore())


def read_bag(path: Path) -> tuple[dict[str, str], list[tuple[str, int, bytes]]]:
    """(topic -> type, [(topic, log time, raw bytes)] in log-time order) of any bag."""
    with _any_reader(path) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        messages = [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]
    return types, messages


def deserialize(path: Path, topic: str) -> list[tuple[int, object]]:
    """(log time, message) of one topic, deserialised with the definitions stored in the bag."""
    with _any_reader(path) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        return [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages(connections=connections)]


def full_mask(instance, height: int, width: int) -> np.ndarray:
    """The full-frame mask of an Instance message, read straight from its fields."""
    box, crop = instance.box, instance.mask
    assert crop.encoding == "mono8" and crop.width == box.width and crop.height == box.height
    full = np.zeros((height, width), dtype=bool)
    if box.width and box.height:
        pixels = np.asarray(crop.data, dtype=np.uint8).reshape(crop.height, crop.step)[:, :crop.width]
        assert set(np.unique(pixels)) <= {0, 255}
        full[box.y_offset:box.y_offset + box.height, box.x_offset:box.x_offset + box.width] = pixels == 255
    return full


def mono16(image) -> np.ndarray:
    assert image.encoding == "mono16" and image.is_bigendian == 0
    rows = np.asarray(image.data, dtype=np.uint8).reshape(image.height, image.step)[:, :image.width * 2]
    return np.ascontiguousarray(rows).view("<u2").reshape(image.height, image.width)


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def coco(directory: Path) -> dict:
    return json.loads((directory / "coco.json").read_text())
