"""The output bag: every input message copied as it was, each annotated frame followed by its
segmentation, label image (and overlay), written by a thread of its own when asked, stored and
described (metadata.yaml) as the chosen ROS 2 distribution's rosbag2 writes bags; and the COCO
data set of every instance."""
from __future__ import annotations

import queue
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import numpy as np
from rosbags.interfaces import ConnectionExtRosbag2, MessageDefinitionFormat
from rosbags.typesys import TypesysError

from instructsam_core.errors import UserError
from instructsam_core.instances import Instance
from instructsam_ros.bags.frames import Entry
from instructsam_ros.bags.options import AnnotateOptions
from instructsam_ros.bags.reading import ImageTopic, decode_frame
from instructsam_ros.bags.rosbag2_format import Distro, TopicRecord, metadata_document, metadata_yaml
from instructsam_ros.bags.source import InputBag
from instructsam_ros.bags.storage import OutputTopic, open_storage
from instructsam_ros.bags.types import IMAGE_TYPE, SEGMENTATION_TYPE, BagMessages
from instructsam_ros.messages.mask_layout import crop_mask, label_image
from instructsam_ros.messages.overlay import draw_overlay
from instructsam_ros.messages.tracking import InstanceTracker

OUTPUT_QUEUE = 64  # messages read ahead by the reader thread, and waiting for the writer thread
_IDL_START = "=" * 80 + "\nIDL: "


def _definition(store, msgtype: str) -> tuple[str, str, str]:
    """(encoding, definition, RIHS01 hash) of a type a typestore knows, as rosbag2 stores them."""
    text, _ = store.generate_msgdef(msgtype, ros_version=2)
    return ("ros2idl" if text.startswith(_IDL_START) else "ros2msg"), text, store.hash_rihs01(msgtype)


def _output_topic(number: int, connection, reader: InputBag, store) -> OutputTopic:
    """An input topic's output: same name, type, definition, hash and QoS (metadata.yaml's where
    it lists the topic, as `ros2 bag play` offers it; else the file's). A definition the bag
    lacks comes from our typestore (the standard types); a type nobody defines is still copied,
    without definition, as rosbag2 records it when it has none."""
    ext = connection.ext
    fmt = ext.serialization_format if isinstance(ext, ConnectionExtRosbag2) else "cdr"
    qos = list(ext.offered_qos_profiles) if isinstance(ext, ConnectionExtRosbag2) else []
    qos = reader.listed_qos.get(connection.topic, qos)  # metadata.yaml's, as `ros2 bag play` offers
    definition = connection.msgdef
    if definition.format != MessageDefinitionFormat.NONE and definition.data:
        encoding = "ros2msg" if definition.format == MessageDefinitionFormat.MSG else "ros2idl"
        digest = connection.digest or reader.listed_hashes.get((connection.topic, connection.msgtype), "")
        if not digest:
            try:
                digest = reader.typestore.hash_rihs01(connection.msgtype)
            except (TypesysError, KeyError):
                digest = ""
        return OutputTopic(number, connection.topic, connection.msgtype, fmt, qos, encoding, definition.data, digest)
    if connection.msgtype in store.fielddefs:
        return OutputTopic(number, connection.topic, connection.msgtype, fmt, qos,
                           *_definition(store, connection.msgtype))
    return OutputTopic(number, connection.topic, connection.msgtype, fmt, qos, "", "", connection.digest or "")


def _write_error(error: BaseException) -> UserError:
    """A full disk or a vanished directory, said in one line."""
    return UserError(f"cannot write the output bag: {' '.join(str(error).split())}")


WRITE_ERRORS = (OSError, sqlite3.Error)


class OutputBag:
    """The output bag, written from entries handed over in input order.

    Copying a ~1 MB frame into the storage costs about a millisecond (more with compression).
    With `threaded` a thread of its own does it, overlapping the model (torch and zstd release
    the GIL while they compute); it owns the storage from open to close (sqlite3 connections
    must stay in the thread that made them). Without, `put` writes at once.
    """

    def __init__(self, path: Path, storage: str, reader: InputBag, topics: list[ImageTopic],
                 messages: BagMessages, options: AnnotateOptions, threaded: bool, distro: Distro,
                 compression: tuple[str, str | None]) -> None:
        self.path, self.storage, self.distro, self.compression = path, storage, distro, compression
        self.reader, self.topics, self.messages, self.options = reader, topics, messages, options
        self.trackers = [InstanceTracker() for _ in topics]
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.copied = 0
        self.added = 0
        self.handed: Counter = Counter()  # input topic -> messages handed over for copying
        self.size = 0  # bytes of the storage file once closed
        self.error: BaseException | None = None
        self._aborting = False
        self._queue: queue.Queue = queue.Queue(maxsize=OUTPUT_QUEUE)
        self._inline = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="annotate-bag-writer", daemon=True)
            self._thread.start()
        else:
            try:
                self._inline = self._open()
            except WRITE_ERRORS as error:
                raise _write_error(error) from None

    def put(self, entry: Entry | None) -> None:
        if entry is not None:
            self.handed[entry.connection.topic] += 1
        if self._inline is not None:
            try:
                if entry is None:
                    self._close(self._inline)
                else:
                    self._write(self._inline, entry)
            except WRITE_ERRORS as error:
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

    def _open(self):
        options = self.options
        storage = open_storage(self.path, self.storage, self.distro, *self.compression)
        store = self.messages.store
        self.output_of: dict[int, int] = {}
        self.records: list[TopicRecord] = []
        by_key: dict[tuple[str, str], int] = {}

        def add(topic: OutputTopic) -> int:
            storage.add_topic(topic)
            self.records.append(TopicRecord(topic.name, topic.msgtype, topic.serialization_format, topic.qos,
                                            topic.digest))
            return topic.id

        for connection in self.reader.connections:
            key = (connection.topic, connection.msgtype)
            if key not in by_key:
                by_key[key] = add(_output_topic(len(self.records) + 1, connection, self.reader, store))
            self.output_of[connection.id] = by_key[key]
        self.derived = []
        kinds = [("segmentation", SEGMENTATION_TYPE), ("label_image", IMAGE_TYPE)]
        if options.overlay:
            kinds.append(("overlay", IMAGE_TYPE))
        for topic in self.topics:
            self.derived.append({kind: add(OutputTopic(len(self.records) + 1, topic.derived(kind), msgtype, "cdr", [],
                                                       *_definition(store, msgtype)))
                                 for kind, msgtype in kinds})
        return storage

    def _close(self, storage) -> None:
        """The storage's index, then metadata.yaml, both as the distribution writes them."""
        document = metadata_document(self.distro, storage.storage_id, [storage.span.record(storage.relative_path)],
                                     self.records, storage.compression, self.reader.custom_data)
        storage.close(document)
        (self.path / "metadata.yaml").write_text(metadata_yaml(document), encoding="utf-8")
        self.size = (self.path / storage.relative_path).stat().st_size

    def _store(self, storage, topic_id: int, log_time: int, data) -> None:
        storage.write(topic_id, log_time, data)
        self.records[topic_id - 1].count += 1

    def _run(self) -> None:
        storage = None
        try:
            storage = self._open()
            while True:
                entry = self._queue.get()
                if entry is None or self._aborting:
                    break
                self._write(storage, entry)
            if self._aborting:
                storage.abort()
            else:
                self._close(storage)
        except BaseException as error:  # handed to the main thread, which raises it
            self.error = _write_error(error) if isinstance(error, WRITE_ERRORS) else error
            if storage is not None:
                try:
                    storage.abort()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass

    def _write(self, storage, entry: Entry) -> None:
        self._store(storage, self.output_of[entry.connection.id], entry.log_time, entry.raw)
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
        self._store(storage, outputs["segmentation"], entry.log_time, messages.serialize(segmentation))
        labels = label_image(instances, ids, height, width, boxes)
        label_msg = messages.image(labels, "mono16", header)  # lossless; compression makes it small
        self._store(storage, outputs["label_image"], entry.log_time, messages.serialize(label_msg))
        self.added += 2
        if "overlay" in outputs:
            rgb = entry.rgb
            if rgb is None:  # a frame whose result came from the record: decode it again
                decode_frame(self.reader, topic, entry, self.options.max_pixels)
                rgb = entry.rgb
                if rgb is None:
                    raise UserError(f"frame {entry.index} of {topic.name} no longer decodes ({entry.skipped}); "
                                    "the bag changed since the record was made")
            picture = draw_overlay(rgb, labels, instances, ids, boxes)
            overlay_msg = messages.image(picture, "rgb8", header)
            self._store(storage, outputs["overlay"], entry.log_time, messages.serialize(overlay_msg))
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

