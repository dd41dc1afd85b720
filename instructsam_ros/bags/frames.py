"""A frame on its way through annotate-bag: the message as read, its place in a batch, and its
result - fresh from the model or taken back from the record - in the one lossless form the output
is built from (RLE masks, float-repr scores)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instructsam_core.errors import UserError
from instructsam_core.masks import encode_mask, rle_to_mask
from instructsam_ros.messages.mask_layout import int_box


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
class Entry:
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
class Batch:
    topic: int
    first: int  # rank of its first frame among the topic's chosen frames
    start_time: int
    entries: list[Entry] = field(default_factory=list)
    record: list[dict] | None = None  # its frames from an earlier run's record



def result_of(entry: Entry, prediction) -> FrameResult:
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


def record_of(entry: Entry) -> dict:
    record: dict[str, Any] = {"index": entry.index, "time": entry.log_time}
    if entry.skipped is not None:
        record["skipped"] = entry.skipped
        return record
    result = entry.result
    record.update(stamp=list(result.stamp), frame_id=result.frame_id, size=list(result.size),
                  phrases=result.phrases, instances=result.instances)
    return record


def apply_record(entry: Entry, record: dict) -> None:
    if "skipped" in record:
        entry.skipped = str(record["skipped"])
        return
    try:
        entry.result = FrameResult((int(record["stamp"][0]), int(record["stamp"][1])), str(record["frame_id"]),
                                   (int(record["size"][0]), int(record["size"][1])), list(record["phrases"]),
                                   list(record["instances"]))
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise UserError(f"the record of frame {entry.index} is damaged ({error}); pass --overwrite to start over") from None

