"""Offline annotation of recorded camera topics: a rosbag2 (sqlite3 or MCAP) or .mcap/.db3 in, a
new bag with every frame segmented out, without ROS (rosbags reads and writes the bags).

One streaming pass over the input, in log-time order:
  * every message is queued for the output as it is read; a chosen frame (image topic, inside
    --start/--end, every N-th) is decoded (image_conversions) and joins its topic's open batch;
  * a batch closes at --batch-size frames, when the bag's log time has moved MAX_BATCH_SPAN_NS
    past its first frame, or at the end; then the model runs on it and its results are
    appended as one line to `<out>.partial/frames.jsonl` (the resumable record);
  * the queue is released in input order to a writer thread, which copies each message byte
    for byte with its log time and adds, after each annotated frame, `<topic>/segmentation`,
    `<topic>/label_image` (and `<topic>/overlay`) with the frame's header and log time. The
    thread's copying and writing overlap the model, so the pass is bounded by the model.
The bag and `coco.json` are written inside `<out>.partial/` and renamed to `<out>` last: an
output that exists is complete.

Killed and run again with the same arguments, the pass reads the finished batches' results
from frames.jsonl instead of running the model and rewrites the output from the start. The
result is the same bytes as an uninterrupted run: batch boundaries depend only on the bag
(frame counts and log times), never on where a run stopped; masks (RLE) and scores (float repr)
are recorded losslessly and the output is always built from those values; and tracker ids
are assigned in output order by one thread. Nothing comes from the clock.
"""
from __future__ import annotations

import errno
import json
import math
import os
import queue
import shutil
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import ConnectionExtRosbag2, MessageDefinitionFormat
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys import TypesysError

from instructsam_core.errors import UserError
from instructsam_core.instances import Instance
from instructsam_core.masks import encode_mask, rle_to_mask
from instructsam_ros.bags.types import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE, SEGMENTATION_TYPE, BagMessages, build_typestore
from instructsam_ros.messages.images import BadImageError, compressed_msg_to_rgb, image_msg_to_rgb
from instructsam_ros.messages.mask_layout import crop_mask, int_box, label_image
from instructsam_ros.messages.overlay import draw_overlay
from instructsam_ros.messages.tracking import InstanceTracker

try:  # rosbags reads sqlite3 bags through apsw; its errors share no base with sqlite3's
    import apsw

    _APSW_ERRORS: tuple[type[BaseException], ...] = (apsw.Error,)
except ImportError:  # pragma: no cover - apsw comes with rosbags
    _APSW_ERRORS = ()

# What reading a damaged bag can raise, inside rosbags, its storage libraries or the OS.
BAG_READ_ERRORS = (AnyReaderError, ReaderError, TypesysError, SerdeError, OSError, sqlite3.Error, *_APSW_ERRORS)
# What deserialising one corrupt message can raise (it is skipped and counted, not fatal).
MESSAGE_ERRORS = (*BAG_READ_ERRORS, ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError, AssertionError)

IMAGE_TYPES = {IMAGE_TYPE: False, COMPRESSED_IMAGE_TYPE: True}  # msgtype -> compressed
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
STATE_FORMAT = 1
COCO_NAME = "coco.json"
DEFAULT_MAX_PIXELS = 4096 * 4096  # the node's max_input_pixels default
# A batch waits at most this much bag time for more frames, so the messages held back until
# it is done stay a second of recording (a slow camera beside a fast one would hold more).
MAX_BATCH_SPAN_NS = 10**9
FSYNC_INTERVAL_S = 1.0  # the record is flushed per batch (a kill loses nothing), fsynced this often
OUTPUT_QUEUE = 64  # messages read ahead by the reader thread, and waiting for the writer thread


@dataclass
class AnnotateOptions:
    """Everything `instructsam annotate-bag` was asked to do (validated by `check_options`)."""

    bag: Path
    out: Path
    topics: list[str]
    instruction: str
    phrases: list[str] | None = None
    model: str = "default"
    device: str = "cpu"
    dtype: str | None = None
    threshold: float = 0.3
    max_instances: int = 100
    start: float | None = None
    end: float | None = None
    every: int = 1
    batch_size: int = 4
    overlay: bool = False
    storage: str | None = None
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True
    # Read and write the bag in threads beside the model. None = when the model leaves a core
    # idle: on a GPU, or on a CPU whose model threads are fewer than the usable cores. When the
    # model takes every core the threads only take its CPU (BENCHMARKS.md).
    threads: bool | None = None

    @property
    def use_threads(self) -> bool:
        if self.threads is not None:
            return self.threads
        return self.device.startswith("cuda") or model_leaves_a_core_idle()


def model_leaves_a_core_idle() -> bool:
    """True when torch's CPU threads are fewer than the cores this process may run on."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return torch.get_num_threads() < cores


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


@dataclass
class Summary:
    """What a run did, for the end-of-run report and the benchmark."""

    out: Path
    storage: str
    frames: int = 0  # frames chosen
    resumed: int = 0  # of those, results read from an earlier run's record
    per_topic: dict[str, list[int]] = field(default_factory=dict)  # topic -> [annotated, skipped]
    skipped: Counter = field(default_factory=Counter)  # reason -> frames
    phrases: Counter = field(default_factory=Counter)  # phrase -> instances
    messages_copied: int = 0
    messages_added: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # count, load, decode, model, record, finish, total

    @property
    def io_seconds(self) -> float:
        """The run's time outside the model and its loading: bag reading, decoding, writing."""
        return self.seconds.get("total", 0.0) - self.seconds.get("load", 0.0) - self.seconds.get("model", 0.0)


# ----------------------------------------------------------------------------- input


def check_options(options: AnnotateOptions) -> None:
    """Refuse bad arguments before the bag is read or the model loaded."""
    if not 0.0 <= options.threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {options.threshold}")
    if options.max_instances < 1:
        raise UserError(f"--max-instances must be at least 1, got {options.max_instances}")
    if options.every < 1:
        raise UserError(f"--every must be at least 1, got {options.every}")
    if options.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.max_pixels < 1:
        raise UserError(f"--max-pixels must be at least 1, got {options.max_pixels}")
    for name in ("start", "end"):
        value = getattr(options, name)
        if value is not None and (not math.isfinite(value) or value < 0):
            raise UserError(f"--{name} must be a number of seconds >= 0 from the bag's start, got {value}")
    if options.start is not None and options.end is not None and options.end <= options.start:
        raise UserError(f"--end ({options.end}) must be after --start ({options.start})")
    if not options.topics:
        raise UserError("give at least one image topic (--topics)")
    duplicates = sorted({t for t in options.topics if options.topics.count(t) > 1})
    if duplicates:
        raise UserError(f"topic given twice: {', '.join(duplicates)}")
    if options.phrases is not None and not any(p.strip() for p in options.phrases):
        raise UserError("--phrases were given but all are empty")
    device = options.device
    if not (device in ("cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if options.storage is not None and options.storage not in STORAGES:
        raise UserError(f"--storage must be one of {', '.join(STORAGES)}, got {options.storage!r}")


def _read_error(path: Path, error: BaseException) -> UserError:
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


def open_bag(path: Path, store) -> AnyReader:
    """An open AnyReader, or a one-line error for a path that is not a readable rosbag2."""
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
        reader = AnyReader([path], default_typestore=store)
        reader.open()
    except BAG_READ_ERRORS as error:
        raise _read_error(path, error) from None
    return reader


def storage_of(path: Path) -> str:
    """sqlite3 or mcap: what the input bag is stored as (the default for the output)."""
    return "mcap" if any(".mcap" in f.name for f in bag_files(path)) else "sqlite3"


def describe_image_topics(reader: AnyReader) -> str:
    found = [f"{name} ({info.msgtype}, {info.msgcount} messages)" for name, info in sorted(reader.topics.items())
             if info.msgtype in IMAGE_TYPES]
    return ", ".join(found) if found else "(none)"


def resolve_topics(reader: AnyReader, path: Path, names: list[str]) -> list[ImageTopic]:
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


def time_window(reader: AnyReader, start: float | None, end: float | None) -> tuple[int, int]:
    """[first, last) log times in ns for --start/--end, given in seconds from the bag's start."""
    origin = reader.start_time
    first = origin + int(round(start * 1e9)) if start is not None else origin
    last = origin + int(round(end * 1e9)) if end is not None else max(reader.end_time, origin + 1)
    return first, last


def _messages(reader: AnyReader, path: Path, **kwargs) -> Iterator[tuple[Any, int, bytes]]:
    """reader.messages with read errors turned into one-line errors."""
    try:
        yield from reader.messages(**kwargs)
    except BAG_READ_ERRORS as error:
        raise _read_error(path, error) from None


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


def count_frames(reader: AnyReader, path: Path, topics: list[ImageTopic], window: tuple[int, int], every: int,
                 whole_bag: bool) -> int:
    """How many frames will be annotated: from the bag's index for the whole bag, by reading
    the chosen range otherwise (the progress bar's total)."""
    if whole_bag:
        return sum(-(-sum(c.msgcount for c in t.connections) // every) for t in topics)
    connections = [c for t in topics for c in t.connections]
    per_topic = Counter()
    name_of = {c.id: t.name for t in topics for c in t.connections}
    for connection, _, _ in _messages(reader, path, connections=connections, start=window[0], stop=window[1]):
        per_topic[name_of[connection.id]] += 1
    return sum(-(-count // every) for count in per_topic.values())


# ----------------------------------------------------------------------------- resumable record


class RunState:
    """`<out>.partial/`: the run's settings (run.json), finished batches (frames.jsonl), the
    output being written (output/).

    One batch is one line, written and flushed at once, so a kill leaves at most a cut-off last
    line, which is dropped. Lines are checked against the frames the bag yields when they are
    used, so a changed bag is noticed.
    """

    def __init__(self, out: Path) -> None:
        self.dir = out.with_name(out.name + ".partial")
        self.run_file = self.dir / "run.json"
        self.frames_file = self.dir / "frames.jsonl"
        self.batches: dict[tuple[int, int], list[dict]] = {}
        self._lock_handle = None
        self._handle = None
        self._synced = 0.0

    def open(self, fingerprint: dict, overwrite: bool) -> None:
        if self.dir.exists():
            if not self.dir.is_dir() or (any(self.dir.iterdir()) and not self.run_file.is_file()):
                raise UserError(f"{self.dir} exists and is not an annotate-bag state directory; move it away")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        if self.run_file.is_file():
            try:
                previous = json.loads(self.run_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = None
            if previous != fingerprint:
                nothing_done = not self.frames_file.exists() or self.frames_file.stat().st_size == 0
                if not overwrite and not nothing_done:
                    raise UserError(f"{self.dir} holds a run of other settings ({_differences(previous, fingerprint)}); "
                                    "rerun with the same arguments to resume it, or pass --overwrite to start over")
                self.frames_file.unlink(missing_ok=True)
                self.run_file.unlink()
        if not self.run_file.is_file():
            _write_atomic(self.run_file, json.dumps(fingerprint, indent=1) + "\n")
        self._load()
        self._handle = open(self.frames_file, "a", encoding="utf-8")

    def _lock(self) -> None:
        import fcntl

        self._lock_handle = open(self.dir / "lock", "w")
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"another annotate-bag run is writing {self.dir}") from None
            raise

    def _load(self) -> None:
        if not self.frames_file.exists():
            return
        lines = self.frames_file.read_bytes().split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: b"" after a final newline, else a cut-off line
        good_bytes = 0
        for number, line in enumerate(complete, 1):
            try:
                value = json.loads(line)
                key = (int(value["topic"]), int(value["first"]))
                frames = value["frames"]
                if key in self.batches or not isinstance(frames, list) or not frames:
                    raise ValueError("a repeated or empty batch")
                for frame in frames:
                    int(frame["index"]), int(frame["time"])
            except (ValueError, KeyError, TypeError) as error:
                raise UserError(f"{self.frames_file} line {number} is damaged ({error}); "
                                "pass --overwrite to start over") from None
            self.batches[key] = frames
            good_bytes += len(line) + 1
        if tail:
            # The batch being written when the run was killed: dropped, it is done again.
            with open(self.frames_file, "r+b") as handle:
                handle.truncate(good_bytes)
                os.fsync(handle.fileno())

    def append(self, topic: int, first: int, frames: list[dict]) -> None:
        line = json.dumps({"topic": topic, "first": first, "frames": frames}, separators=(",", ":"))
        self._handle.write(line + "\n")
        self._handle.flush()
        if time.monotonic() - self._synced >= FSYNC_INTERVAL_S:
            os.fsync(self._handle.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        for handle in (self._handle, self._lock_handle):
            if handle is not None:
                handle.close()
        self._handle = self._lock_handle = None

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def owned(self) -> bool:
        """This run holds the directory's lock."""
        return self._lock_handle is not None

    def holds_results(self) -> bool:
        return self.frames_file.is_file() and self.frames_file.stat().st_size > 0


def _differences(previous: dict | None, now: dict) -> str:
    if not isinstance(previous, dict):
        return "its run.json is unreadable"
    changed = [key for key in now if previous.get(key) != now[key]]
    return "differs in " + ", ".join(changed) if changed else "another format"


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _file_stats(paths: list[Path]) -> list[list]:
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def fingerprint(options: AnnotateOptions, model_dir: Path) -> dict:
    """What the per-frame results depend on; a resumed run must match it exactly."""
    model_files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors"))
    return {
        "format": STATE_FORMAT,
        "bag": str(options.bag.resolve()),
        "bag_files": _file_stats(bag_files(options.bag)),
        "topics": list(options.topics),
        "instruction": options.instruction,
        "phrases": options.phrases,
        "model": str(model_dir.resolve()),
        "model_files": _file_stats(model_files),
        "device": options.device,
        "dtype": options.dtype,
        "threshold": options.threshold,
        "max_instances": options.max_instances,
        "start": options.start,
        "end": options.end,
        "every": options.every,
        "batch_size": options.batch_size,
        "max_pixels": options.max_pixels,
    }


# ----------------------------------------------------------------------------- frames and results


@dataclass
class FrameResult:
    """One annotated frame as recorded: everything its output messages are built from."""

    stamp: tuple[int, int]
    frame_id: str
    size: tuple[int, int]  # (height, width)
    phrases: list[str]
    instances: list[dict]  # phrase, phrase_index, query_index, score, box [x0, y0, x1, y1], counts (RLE)
    masks: list[np.ndarray] | None = None  # decoded masks, when at hand (fresh predictions)

    def decoded_masks(self) -> list[np.ndarray]:
        if self.masks is None:
            height, width = self.size
            self.masks = [rle_to_mask({"size": [height, width], "counts": item["counts"]}) for item in self.instances]
        return self.masks


@dataclass
class _Entry:
    """A message on its way to the output; a chosen frame also carries its result."""

    connection: Any
    log_time: int
    raw: bytes
    topic: int | None = None  # set for chosen frames
    index: int = -1  # position among its topic's messages in the time range
    rgb: np.ndarray | None = None
    stamp: tuple[int, int] | None = None
    frame_id: str = ""
    skipped: str | None = None
    result: FrameResult | None = None

    @property
    def ready(self) -> bool:
        return self.topic is None or self.skipped is not None or self.result is not None


@dataclass
class _Batch:
    topic: int
    first: int  # rank of its first frame among the topic's chosen frames
    start_time: int
    entries: list[_Entry] = field(default_factory=list)
    record: list[dict] | None = None  # its frames from an earlier run's record


def _decode(reader: AnyReader, topic: ImageTopic, entry: _Entry, max_pixels: int) -> None:
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


def _result_of(entry: _Entry, prediction) -> FrameResult:
    height, width = entry.rgb.shape[:2]
    instances = [{
        "phrase": inst.phrase,
        "phrase_index": int(inst.phrase_index),
        "query_index": int(inst.query_index),
        "score": float(inst.score),
        "box": list(int_box(inst.box, height, width)),
        "counts": encode_mask(inst.mask)["counts"],
    } for inst in prediction.instances]
    return FrameResult(entry.stamp, entry.frame_id, (height, width), list(prediction.phrases), instances,
                       [np.asarray(inst.mask, dtype=bool) for inst in prediction.instances])


def _record_of(entry: _Entry) -> dict:
    record: dict[str, Any] = {"index": entry.index, "time": entry.log_time}
    if entry.skipped is not None:
        record["skipped"] = entry.skipped
        return record
    result = entry.result
    record.update(stamp=list(result.stamp), frame_id=result.frame_id, size=list(result.size),
                  phrases=result.phrases, instances=result.instances)
    return record


def _apply_record(entry: _Entry, record: dict) -> None:
    if "skipped" in record:
        entry.skipped = str(record["skipped"])
        return
    try:
        entry.result = FrameResult((int(record["stamp"][0]), int(record["stamp"][1])), str(record["frame_id"]),
                                   (int(record["size"][0]), int(record["size"][1])), list(record["phrases"]),
                                   list(record["instances"]))
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise UserError(f"the record of frame {entry.index} is damaged ({error}); pass --overwrite to start over") from None


# ----------------------------------------------------------------------------- output


def _copy_connection(writer: Writer, connection, stores) -> Any:
    """The output connection for an input one: same topic, type, definition, hash and QoS."""
    ext = connection.ext
    fmt = ext.serialization_format if isinstance(ext, ConnectionExtRosbag2) else "cdr"
    qos = list(ext.offered_qos_profiles) if isinstance(ext, ConnectionExtRosbag2) else []
    if connection.msgdef.format != MessageDefinitionFormat.NONE and connection.msgdef.data and connection.digest:
        return writer.add_connection(connection.topic, connection.msgtype, msgdef=connection.msgdef.data,
                                     rihs01=connection.digest, serialization_format=fmt, offered_qos_profiles=qos)
    for store in stores:
        if connection.msgtype in store.fielddefs:
            return writer.add_connection(connection.topic, connection.msgtype, typestore=store,
                                         serialization_format=fmt, offered_qos_profiles=qos)
    raise UserError(f"cannot copy topic {connection.topic}: the bag holds no definition of {connection.msgtype}")


def _write_error(error: BaseException) -> UserError:
    """A full disk or a vanished directory, said in one line."""
    return UserError(f"cannot write the output bag: {' '.join(str(error).split())}")


class OutputBag:
    """The output bag, written from entries handed over in input order.

    Copying a ~1 MB frame through rosbags' writers costs about a millisecond. With `threaded`
    a thread of its own does it, overlapping the model (torch releases the GIL while it
    computes); it owns the writer from open to close (sqlite3 connections must stay in the
    thread that made them). Without, `put` writes at once.
    """

    def __init__(self, path: Path, storage: str, reader: AnyReader, topics: list[ImageTopic],
                 messages: BagMessages, options: AnnotateOptions, threaded: bool) -> None:
        self.path, self.storage = path, storage
        self.reader, self.topics, self.messages, self.options = reader, topics, messages, options
        self.trackers = [InstanceTracker() for _ in topics]
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.copied = 0
        self.added = 0
        self.error: BaseException | None = None
        self._aborting = False
        self._queue: queue.Queue = queue.Queue(maxsize=OUTPUT_QUEUE)
        self._inline: Writer | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="annotate-bag-writer", daemon=True)
            self._thread.start()
        else:
            try:
                self._inline = self._open()
            except (OSError, WriterError) as error:
                raise _write_error(error) from None

    def put(self, entry: _Entry | None) -> None:
        if self._inline is not None:
            try:
                if entry is None:
                    self._inline.close()
                else:
                    self._write(self._inline, entry)
            except (OSError, WriterError) as error:
                raise _write_error(error) from None
            return
        while True:
            if self.error is not None:
                raise self.error
            try:
                self._queue.put(entry, timeout=0.5)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Write what is queued and close the bag (its index and metadata)."""
        self.put(None)
        if self._inline is not None:
            return
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop the thread (it drops what is queued) and close the bag without its index."""
        if self._inline is not None:
            self._inline.abort()
            return
        self._aborting = True
        while self._thread.is_alive():
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
            self._thread.join(timeout=0.1)

    def _open(self) -> Writer:
        writer = Writer(self.path, version=9, storage_plugin=STORAGES[self.storage])
        writer.open()
        messages = self.messages
        self.output_of: dict[int, Any] = {}
        by_key: dict[tuple[str, str], Any] = {}
        for connection in self.reader.connections:
            key = (connection.topic, connection.msgtype)
            if key not in by_key:
                by_key[key] = _copy_connection(writer, connection, (self.reader.typestore, messages.store))
            self.output_of[connection.id] = by_key[key]
        self.derived = []
        for topic in self.topics:
            outputs = {"segmentation": writer.add_connection(topic.derived("segmentation"), SEGMENTATION_TYPE,
                                                             typestore=messages.store),
                       "label_image": writer.add_connection(topic.derived("label_image"), IMAGE_TYPE,
                                                            typestore=messages.store)}
            if self.options.overlay:
                outputs["overlay"] = writer.add_connection(topic.derived("overlay"), IMAGE_TYPE, typestore=messages.store)
            self.derived.append(outputs)
        return writer

    def _run(self) -> None:
        writer = None
        try:
            writer = self._open()
            while True:
                entry = self._queue.get()
                if entry is None or self._aborting:
                    break
                self._write(writer, entry)
            if self._aborting:
                writer.abort()
            else:
                writer.close()
        except BaseException as error:  # handed to the main thread, which raises it
            self.error = _write_error(error) if isinstance(error, (OSError, WriterError)) else error
            if writer is not None:
                try:
                    writer.abort()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass

    def _write(self, writer: Writer, entry: _Entry) -> None:
        writer.write(self.output_of[entry.connection.id], entry.log_time, entry.raw)
        self.copied += 1
        if entry.result is None:
            return
        messages, result = self.messages, entry.result
        topic = self.topics[entry.topic]
        outputs = self.derived[entry.topic]
        header = messages.header(*result.stamp, result.frame_id)
        height, width = result.size
        masks = result.decoded_masks()
        boxes = [tuple(int(v) for v in item["box"]) for item in result.instances]
        instances = [Instance(item["phrase"], float(item["score"]), mask, tuple(float(v) for v in box),
                              int(item["phrase_index"]), int(item["query_index"]))
                     for item, mask, box in zip(result.instances, masks, boxes)]
        ids = self.trackers[entry.topic].assign([inst.phrase for inst in instances], boxes)
        stamp = {"sec": result.stamp[0], "nanosec": result.stamp[1]}
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "topic": topic.name, "frame_index": entry.index,
                            "log_time_ns": entry.log_time, "stamp": stamp, "frame_id": result.frame_id,
                            "height": height, "width": width, "phrases": result.phrases})
        instance_msgs = []
        for instance, instance_id, box, item in zip(instances, ids, boxes, result.instances):
            crop = crop_mask(instance.mask, box)
            area = int(np.count_nonzero(crop))
            instance_msgs.append(messages.instance(instance_id, instance.phrase, instance.phrase_index,
                                                   instance.score, box, crop, header))
            x0, y0, x1, y1 = box
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": image_id, "phrase": instance.phrase,
                "instance_id": instance_id, "score": instance.score, "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": area, "iscrowd": 0, "segmentation": {"size": [height, width], "counts": item["counts"]},
                "stamp": stamp,
            })
        segmentation = messages.segmentation(header, height, width, self.options.instruction, result.phrases,
                                             instance_msgs)
        writer.write(outputs["segmentation"], entry.log_time, messages.serialize(segmentation))
        labels = label_image(instances, ids, height, width, boxes)
        writer.write(outputs["label_image"], entry.log_time, messages.serialize(messages.image(labels, "mono16", header)))
        self.added += 2
        if "overlay" in outputs:
            rgb = entry.rgb
            if rgb is None:  # a frame whose result came from the record: decode it again
                _decode(self.reader, topic, entry, self.options.max_pixels)
                rgb = entry.rgb
                if rgb is None:
                    raise UserError(f"frame {entry.index} of {topic.name} no longer decodes ({entry.skipped}); "
                                    "the bag changed since the record was made")
            picture = draw_overlay(rgb, labels, instances, ids, boxes)
            writer.write(outputs["overlay"], entry.log_time, messages.serialize(messages.image(picture, "rgb8", header)))
            self.added += 1

    def coco(self) -> dict:
        """All instances as a COCO data set: one image per annotated frame, one category per phrase."""
        names = sorted({a["phrase"] for a in self.annotations})
        category = {name: k for k, name in enumerate(names, 1)}
        annotations = [{**a, "category_id": category[a["phrase"]]} for a in self.annotations]
        options = self.options
        return {
            "info": {"description": "instructsam annotate-bag", "bag": str(options.bag), "topics": list(options.topics),
                     "instruction": options.instruction, "phrases": options.phrases, "model": options.model,
                     "threshold": options.threshold},
            "images": self.images,
            "annotations": annotations,
            "categories": [{"id": k, "name": name, "supercategory": "phrase"} for name, k in category.items()],
        }


# ----------------------------------------------------------------------------- the pass


class _Pass:
    """The streaming pass (see the module docstring)."""

    def __init__(self, reader, options: AnnotateOptions, topics: list[ImageTopic], window: tuple[int, int],
                 state: RunState, output: OutputBag, load_predictor, summary: Summary, bar) -> None:
        self.reader, self.options, self.topics, self.window = reader, options, topics, window
        self.state, self.output, self.load_predictor, self.summary, self.bar = state, output, load_predictor, summary, bar
        self.predictor = None
        self.used: set[tuple[int, int]] = set()
        self.skipped_here = 0

    def run(self) -> None:
        options = self.options
        topic_of = {c.id: i for i, t in enumerate(self.topics) for c in t.connections}
        counters = Counter()
        open_batches: dict[int, _Batch] = {}
        held: deque[_Entry] = deque()
        stream = _messages(self.reader, options.bag)
        if options.use_threads:
            stream = prefetched(stream, OUTPUT_QUEUE)
        with closing(stream):
            for connection, log_time, raw in stream:
                self._take(connection, log_time, raw, topic_of, counters, open_batches, held)
        for number in list(open_batches):
            self._close(open_batches.pop(number))
        while held:
            self.output.put(held.popleft())
        unused = set(self.state.batches) - self.used
        if unused:
            topic, first = min(unused)
            raise UserError(f"the record has frames of {self.topics[topic].name} from rank {first} that "
                            f"{options.bag} no longer has; pass --overwrite to start over")

    def _take(self, connection, log_time: int, raw: bytes, topic_of: dict, counters: Counter,
              open_batches: dict[int, _Batch], held: deque) -> None:
        """One input message: queue it, add a chosen frame to its batch, close full or old batches."""
        options, seconds = self.options, self.summary.seconds
        for number in [n for n, b in open_batches.items() if log_time - b.start_time > MAX_BATCH_SPAN_NS]:
            self._close(open_batches.pop(number))
        entry = _Entry(connection, log_time, raw)
        held.append(entry)
        number = topic_of.get(connection.id)
        if number is not None and self.window[0] <= log_time < self.window[1]:
            index = counters[number]
            counters[number] += 1
            if index % options.every == 0:
                entry.topic, entry.index = number, index
                batch = open_batches.get(number)
                if batch is None:
                    rank = index // options.every
                    batch = open_batches[number] = _Batch(number, rank, log_time,
                                                          record=self.state.batches.get((number, rank)))
                batch.entries.append(entry)
                if batch.record is None:
                    start = time.perf_counter()
                    _decode(self.reader, self.topics[number], entry, options.max_pixels)
                    seconds["decode"] += time.perf_counter() - start
                if len(batch.entries) == options.batch_size:
                    self._close(open_batches.pop(number))
        while held and held[0].ready:
            self.output.put(held.popleft())

    def _close(self, batch: _Batch) -> None:
        if batch.record is not None:
            expected = [(int(r["index"]), int(r["time"])) for r in batch.record]
            if expected != [(e.index, e.log_time) for e in batch.entries]:
                raise UserError(f"{self.options.bag} is not the bag the record was made from "
                                f"({self.topics[batch.topic].name} near frame {batch.entries[0].index}); "
                                "pass --overwrite to start over")
            for entry, record in zip(batch.entries, batch.record):
                _apply_record(entry, record)
            self.used.add((batch.topic, batch.first))
        else:
            self._predict(batch)
            start = time.perf_counter()
            self.state.append(batch.topic, batch.first, [_record_of(e) for e in batch.entries])
            self.summary.seconds["record"] += time.perf_counter() - start
            self.bar.update(len(batch.entries))
        skipped = sum(1 for e in batch.entries if e.skipped is not None)
        if skipped and batch.record is None:
            self.skipped_here += skipped
            self.bar.set_postfix(skipped=self.skipped_here, refresh=False)
        counts = self.summary.per_topic.setdefault(self.topics[batch.topic].name, [0, 0])
        counts[0] += len(batch.entries) - skipped
        counts[1] += skipped
        for entry in batch.entries:
            if entry.skipped is not None:
                self.summary.skipped[entry.skipped.split(" (")[0]] += 1
            else:
                self.summary.phrases.update(item["phrase"] for item in entry.result.instances)
                if not self.options.overlay:
                    entry.rgb = None  # the writer needs the pixels only for overlays

    def _predict(self, batch: _Batch) -> None:
        """The model on a batch; frames of one image size go through it together."""
        seconds, options = self.summary.seconds, self.options
        if self.predictor is None:
            start = time.perf_counter()
            self.predictor = self.load_predictor()
            seconds["load"] += time.perf_counter() - start
        groups: dict[tuple, list[_Entry]] = {}
        for entry in batch.entries:
            if entry.skipped is None:
                groups.setdefault(entry.rgb.shape, []).append(entry)
        for members in groups.values():
            count = len(members)
            phrases = None if options.phrases is None else [list(options.phrases)] * count
            start = time.perf_counter()
            try:
                results = self.predictor.predict_batch([e.rgb for e in members], [options.instruction] * count, phrases)
            except RuntimeError as error:
                if "out of memory" in str(error).lower():
                    raise UserError(f"the device ran out of memory on a batch of {count} frames; "
                                    "use a smaller --batch-size") from None
                raise
            seconds["model"] += time.perf_counter() - start
            start = time.perf_counter()
            for entry, prediction in zip(members, results):
                entry.result = _result_of(entry, prediction)
            seconds["record"] += time.perf_counter() - start


# ----------------------------------------------------------------------------- the command


def _check_output(options: AnnotateOptions) -> None:
    bag, out = options.bag.resolve(), options.out.resolve()
    if out == bag or bag in out.parents or out in bag.parents:
        raise UserError(f"--out {options.out} must be outside the input bag {options.bag}")
    if out.exists() or out.is_symlink():
        if not options.overwrite:
            raise UserError(f"{options.out} exists; pass --overwrite to replace it")
        if not out.is_dir() or not (out / "metadata.yaml").is_file():
            raise UserError(f"refusing to replace {options.out}: it is not a rosbag2 directory")


def annotate_bag(options: AnnotateOptions, load_predictor: Callable[[], Any], log: Callable[[str], None] = print) -> Summary:
    """Annotate a bag; `load_predictor` is called only when some frame still needs the model."""
    from tqdm import tqdm

    from instructsam_core.model_paths import resolve_model_dir

    wall = time.perf_counter()
    check_options(options)
    _check_output(options)
    model_dir = resolve_model_dir(options.model)
    messages = BagMessages(build_typestore())
    reader = open_bag(options.bag, messages.store)
    storage = options.storage or storage_of(options.bag)
    summary = Summary(out=options.out, storage=storage)
    summary.seconds.update(count=0.0, load=0.0, decode=0.0, model=0.0, record=0.0, finish=0.0)
    state = RunState(options.out)
    output = None
    finished = False
    try:
        topics = resolve_topics(reader, options.bag, options.topics)
        window = time_window(reader, options.start, options.end)
        start = time.perf_counter()
        summary.frames = count_frames(reader, options.bag, topics, window, options.every,
                                      whole_bag=options.start is None and options.end is None)
        summary.seconds["count"] = time.perf_counter() - start
        if summary.frames == 0:
            raise UserError(f"no frames of {', '.join(options.topics)} in the chosen time range of {options.bag}")
        state.open(fingerprint(options, model_dir), options.overwrite)
        summary.resumed = sum(len(frames) for frames in state.batches.values())
        if summary.resumed:
            log(f"resuming: {summary.resumed} of {summary.frames} frames were done by an earlier run ({state.dir})")
        staging = state.dir / "output" / options.out.name
        shutil.rmtree(staging.parent, ignore_errors=True)  # a bag an interrupted run was writing
        staging.parent.mkdir(parents=True)
        output = OutputBag(staging, storage, reader, topics, messages, options, options.use_threads)
        bar = tqdm(total=summary.frames, initial=summary.resumed, unit="frame", desc="annotating",
                   disable=not options.progress, mininterval=1.0)
        _Pass(reader, options, topics, window, state, output, load_predictor, summary, bar).run()
        bar.close()
        start = time.perf_counter()
        output.finish()
        summary.messages_copied, summary.messages_added = output.copied, output.added
        _write_atomic(staging / COCO_NAME, json.dumps(output.coco(), separators=(",", ":")) + "\n")
        output = None
        if options.out.exists():  # --overwrite, checked above
            shutil.rmtree(options.out)
        os.replace(staging, options.out)
        _fsync_dir(options.out.parent)
        summary.seconds["finish"] = time.perf_counter() - start
        finished = True
    finally:
        if output is not None:
            output.abort()
        reader.close()
        if finished or (state.owned and not state.holds_results()):
            state.remove()  # done, or failed before any result worth resuming from
        state.close()
    summary.seconds["total"] = time.perf_counter() - wall
    return summary


def _fsync_dir(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def format_summary(summary: Summary) -> list[str]:
    """The end-of-run report, one fact per line."""
    annotated = sum(a for a, _ in summary.per_topic.values())
    skipped = sum(s for _, s in summary.per_topic.values())
    topics = ", ".join(f"{name} {a}" + (f" (+{s} skipped)" if s else "") for name, (a, s) in summary.per_topic.items())
    lines = [f"annotated {annotated} of {summary.frames} frames: {topics}"]
    if summary.resumed:
        lines.append(f"  the results of {summary.resumed} frames came from an earlier, interrupted run")
    if skipped:
        reasons = "; ".join(f"{reason}: {count}" for reason, count in summary.skipped.most_common())
        lines.append(f"skipped {skipped} frames: {reasons}")
    if summary.phrases:
        lines.append("instances: " + ", ".join(f"{phrase} {count}" for phrase, count in sorted(summary.phrases.items())))
    else:
        lines.append("instances: none")
    seconds = summary.seconds
    done_here = summary.frames - summary.resumed
    rate = f"; {done_here / (seconds['total'] - seconds['load']):.2f} frames/s" if done_here else ""
    share = summary.io_seconds / (seconds["total"] - seconds["load"]) if seconds["total"] > seconds["load"] else 0.0
    lines.append(f"time: {seconds['total']:.1f} s (model {seconds['model']:.1f} s, loading it {seconds['load']:.1f} s, "
                 f"everything else {summary.io_seconds:.1f} s = {100 * share:.1f} %){rate}")
    lines.append(f"wrote {summary.out} ({summary.storage}: {summary.messages_copied} original + "
                 f"{summary.messages_added} new messages) and {summary.out / COCO_NAME}")
    return lines
