"""The output bag: every input message copied as it was, each annotated frame followed by its
segmentation, label image (and overlay), written by a thread of its own when asked; and the
COCO data set of every instance."""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.interfaces import ConnectionExtRosbag2, MessageDefinitionFormat
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

from instructsam_core.errors import UserError
from instructsam_core.instances import Instance
from instructsam_ros.bags.frames import Entry
from instructsam_ros.bags.options import AnnotateOptions
from instructsam_ros.bags.reading import ImageTopic, decode_frame
from instructsam_ros.bags.types import IMAGE_TYPE, SEGMENTATION_TYPE, BagMessages
from instructsam_ros.messages.mask_layout import crop_mask, label_image
from instructsam_ros.messages.overlay import draw_overlay
from instructsam_ros.messages.tracking import InstanceTracker

STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
OUTPUT_QUEUE = 64  # messages read ahead by the reader thread, and waiting for the writer thread


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

    def put(self, entry: Entry | None) -> None:
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

    def _write(self, writer: Writer, entry: Entry) -> None:
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
                decode_frame(self.reader, topic, entry, self.options.max_pixels)
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

