"""Reading the input bag (source.py): opening it (one-line errors for what cannot be read), the
chosen image topics, the time window, the messages in log-time order (optionally read ahead by a
thread), the frame count, and one frame decoded to RGB."""
from __future__ import annotations

import queue
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard
from rosbags.rosbag2 import ReaderError
from rosbags.serde import SerdeError
from rosbags.typesys import TypesysError

from instructsam_core.errors import UserError
from instructsam_ros.bags.frames import Entry
from instructsam_ros.bags.source import InputBag
from instructsam_ros.bags.types import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE
from instructsam_ros.messages.images import BadImageError, compressed_msg_to_rgb, image_msg_to_rgb

try:  # rosbags reads sqlite3 bags through apsw; its errors share no base with sqlite3's
    import apsw

    _APSW_ERRORS: tuple[type[BaseException], ...] = (apsw.Error,)
except ImportError:  # pragma: no cover - apsw comes with rosbags
    _APSW_ERRORS = ()

# What reading a damaged bag can raise, inside rosbags, its storage libraries or the OS.
BAG_READ_ERRORS = (ReaderError, TypesysError, SerdeError, zstandard.ZstdError, OSError, sqlite3.Error, *_APSW_ERRORS)
# What deserialising one corrupt message can raise (it is skipped and counted, not fatal).
MESSAGE_ERRORS = (*BAG_READ_ERRORS, ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError, AssertionError)

IMAGE_TYPES = {IMAGE_TYPE: False, COMPRESSED_IMAGE_TYPE: True}  # msgtype -> compressed


@dataclass
class ImageTopic:
    name: str
    msgtype: str
    connections: list

    @property
    def compressed(self) -> bool:
        return IMAGE_TYPES[self.msgtype]

    def derived(self, suffix: str) -> str:
        return f"{self.name.rstrip('/')}/{suffix}"



def read_error(path: Path, error: BaseException) -> UserError:
    """A one-line reason for a bag rosbags cannot read, with the fix for the common cases."""
    text = " ".join(str(error).split()) or type(error).__name__
    hint = ""
    if "end magic" in text or "Invalid MCAP footer" in text:
        hint = ("; the MCAP file is truncated or was never closed (a killed recording): "
                "repair it with `mcap recover` or `ros2 bag reindex` first")
    elif "malformed" in text or "disk I/O" in text or "not a database" in text:
        hint = "; the sqlite3 database is truncated or corrupt"
    return UserError(f"cannot read bag {path}: {text}{hint}")


def bag_files(path: Path) -> list[Path]:
    """The files a bag consists of (for the resume fingerprint)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file())


def open_bag(path: Path, store) -> InputBag:
    """The open bag, or a one-line error for a path that is not a readable rosbag2."""
    if not path.exists():
        raise UserError(f"bag {path} does not exist")
    if path.is_file():
        if path.suffix == ".bag":
            raise UserError(f"{path} is a ROS 1 bag; convert it with `rosbags-convert` first")
        if path.suffix not in (".mcap", ".db3"):
            raise UserError(f"{path} is not a bag: give a rosbag2 directory or a .mcap or .db3 file")
    elif not (path / "metadata.yaml").is_file():
        raise UserError(f"{path} is not a rosbag2 directory (no metadata.yaml); give the recording's "
                        "directory or one of its .mcap/.db3 files")
    try:
        return InputBag(path, store)
    except (*BAG_READ_ERRORS, KeyError, ValueError, TypeError) as error:
        raise read_error(path, error) from None


def storage_of(path: Path) -> str:
    """sqlite3 or mcap: what the input bag is stored as (the default for the output)."""
    return "mcap" if any(".mcap" in f.name for f in bag_files(path)) else "sqlite3"


def describe_image_topics(reader: InputBag) -> str:
    found = [f"{name} ({info.msgtype}, {info.msgcount} messages)" for name, info in sorted(reader.topics.items())
             if info.msgtype in IMAGE_TYPES]
    return ", ".join(found) if found else "(none)"


def resolve_topics(reader: InputBag, path: Path, names: list[str]) -> list[ImageTopic]:
    """The requested topics as ImageTopics; unknown or non-image topics list what the bag has."""
    topics = reader.topics
    chosen = []
    for name in names:
        info = topics.get(name)
        if info is None:
            raise UserError(f"bag {path} has no topic {name}; its image topics: {describe_image_topics(reader)}")
        if info.msgtype not in IMAGE_TYPES:
            kind = info.msgtype or "messages of several types"
            raise UserError(f"topic {name} carries {kind}, not sensor_msgs/msg/Image or CompressedImage; "
                            f"image topics in the bag: {describe_image_topics(reader)}")
        chosen.append(ImageTopic(name, info.msgtype, list(info.connections)))
    outputs = [t.derived(s) for t in chosen for s in ("segmentation", "label_image", "overlay")]
    clash = sorted(set(outputs) & set(topics))
    if clash:
        raise UserError(f"the bag already has {', '.join(clash)}; annotate the original recording instead")
    return chosen


def time_window(reader: InputBag, start: float | None, end: float | None) -> tuple[int, int]:
    """[first, last) log times in ns for --start/--end, given in seconds from the bag's start."""
    origin = reader.start_time
    first = origin + int(round(start * 1e9)) if start is not None else origin
    last = origin + int(round(end * 1e9)) if end is not None else max(reader.end_time, origin + 1)
    return first, last


def bag_messages(reader: InputBag, path: Path, **kwargs) -> Iterator[tuple[Any, int, bytes]]:
    """reader.messages with read errors turned into one-line errors."""
    try:
        yield from reader.messages(**kwargs)
    except BAG_READ_ERRORS as error:
        raise read_error(path, error) from None


def prefetched(items: Iterator, depth: int) -> Iterator:
    """`items` read ahead by a thread of its own (errors re-raised here, in order).

    Reading the bag (file reads, rosbags' record parsing) then overlaps the model, like the
    writing in OutputBag.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def read() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(done)
        except BaseException as error:  # handed to the consumer
            buffer.put(error)

    thread = threading.Thread(target=read, name="annotate-bag-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def count_frames(reader: InputBag, path: Path, topics: list[ImageTopic], window: tuple[int, int], every: int,
                 whole_bag: bool) -> int:
    """How many frames will be annotated: from the bag's index for the whole bag, by reading
    the chosen range otherwise (the progress bar's total)."""
    if whole_bag:
        return sum(-(-sum(c.msgcount for c in t.connections) // every) for t in topics)
    connections = [c for t in topics for c in t.connections]
    per_topic = Counter()
    name_of = {c.id: t.name for t in topics for c in t.connections}
    for connection, _, _ in bag_messages(reader, path, connections=connections, start=window[0], stop=window[1]):
        per_topic[name_of[connection.id]] += 1
    return sum(-(-count // every) for count in per_topic.values())



def decode_frame(reader: InputBag, topic: ImageTopic, entry: Entry, max_pixels: int) -> None:
    """Deserialise and decode a frame; a bad one is marked skipped with a one-line reason."""
    try:
        msg = reader.deserialize(entry.raw, topic.msgtype)
        entry.stamp = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
        entry.frame_id = str(msg.header.frame_id)
    except MESSAGE_ERRORS:
        entry.skipped = "message could not be deserialised"
        return
    try:
        entry.rgb = compressed_msg_to_rgb(msg, max_pixels) if topic.compressed else image_msg_to_rgb(msg, max_pixels)
    except BadImageError as error:
        entry.skipped = str(error)

