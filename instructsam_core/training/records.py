"""Reader for the released training JSON (Inst2Seg / referring / instance / conversation data).

A file is a JSON list of records `{image, height, width, type?, annotation, conversations?, mask?}`;
`annotation` is a list (or a JSON string of a list) of
`{type: "phrase"|"sentence"|"OCR", text, category?, ann_type: "mask"|"bbox"|"point", ann, answer?}`
where `ann` holds one encoded mask/box per instance, or null when the text has no target.
A record without `annotation` (or with a null one) is in the conversation form: its
`conversations` turns of free text are what it trains (conversations.py); its image is optional
(text only without one), and so are its size and its record-level `mask` list.

Reading is split in two so that a million-record file opens in seconds:
- `read_records` checks every record's structure (types, keys, sizes) up front and fails with
  `file:index: what is wrong`, or, with `skip_bad=True`, drops it and counts why;
- the masks are decoded when a sample is used (`Record.decode_target`), through
  `instructsam_core.masks`.

A record keeps every annotation in file order; what a sample asks is decided when it is drawn
(samples.py), as in the release: limits (10 instances per annotation, 10 phrases per sample)
are applied there. A record none of whose annotations can ever be asked (every one a point
annotation or one of more than 10 instances) and that has no conversation turns is dropped here
and counted.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instructsam_core.errors import UserError
from instructsam_core.masks import MaskFormatError, decode_annotation, decode_mask
from instructsam_core.training.conversations import parse_conversations
from instructsam_core.training.templates import clean_phrase

MAX_INSTANCES_PER_PHRASE = 10
MAX_PHRASES_PER_SAMPLE = 10
TEXT_TYPES = ("phrase", "sentence", "OCR")


class RecordError(UserError):
    """A training record that cannot be used; the message starts with `file:index`."""


@dataclass
class Target:
    """One annotation: what is asked, the phrase the model answers with, and its instances (encoded)."""

    phrase: str  # the answer: phrase -> its cleaned text, OCR -> the text, sentence -> its cleaned category
    text: str  # the annotation's text as written
    kind: str  # "phrase" | "sentence" | "OCR"
    ann_type: str  # "mask" | "bbox" | "point"
    ann: list[Any] | None  # per-instance encodings; None = no target in the image

    @property
    def num_instances(self) -> int:
        return 0 if self.ann is None else len(self.ann)

    @property
    def usable(self) -> bool:
        """Can be answered with a query block: a mask or box annotation within the instance limit."""
        return self.ann_type != "point" and self.num_instances <= MAX_INSTANCES_PER_PHRASE


@dataclass
class Record:
    """One record of a training file: an image, its annotations in file order, its conversation."""

    source: str  # "file.json:index" (for error messages)
    image: Path | None  # None: a text-only conversation record
    height: int | None  # None only in a conversation-form record that does not state its size
    width: int | None
    targets: list[Target]
    instseg: bool = False  # type "instseg": may be asked as one listing of all its phrases
    # The release's batching key: how many annotations carry instances, or, without annotation,
    # how many record-level masks there are (-1 for none).
    modality_length: int = -1
    conversation: tuple[str, ...] = ()  # the `conversations` values as written; roles by position
    masks: list[Any] | None = None  # record-level `mask` of a conversation-form record (never trained)

    @property
    def phrases(self) -> list[str]:
        return [t.phrase for t in self.targets]

    def decode_target(self, target: Target) -> np.ndarray:
        """bool [n_instances, height, width] masks of one of this record's annotations (n may be 0)."""
        try:
            masks = decode_annotation(target.ann, target.ann_type, self.height, self.width)
        except MaskFormatError as error:
            raise RecordError(f"{self.source}: phrase {target.phrase!r}: {error}") from None
        if masks:
            return np.stack(masks).astype(bool)
        return np.zeros((0, self.height, self.width), dtype=bool)

    def decode(self) -> list[np.ndarray]:
        """Every annotation's masks that a sample can use (see `Target.usable`), in file order."""
        return [self.decode_target(t) for t in self.targets if t.usable]

    def check_masks(self) -> None:
        """Decode the record-level masks at the record's size, as the release does on every draw of
        a record with an image (one that fails makes it draw another sample); nothing trains on them."""
        for index, mask in enumerate(self.masks or ()):
            try:
                decode_mask(mask, self.height, self.width)
            except MaskFormatError as error:
                raise RecordError(f"{self.source}: mask {index}: {error}") from None


@dataclass
class ReadReport:
    """What `read_records` kept and dropped (and why), for the log."""

    records: int = 0
    samples: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return f"{self.records} records -> {self.samples} samples; dropped: {dropped}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_list(value: Any, name: str, what: str) -> list[Any] | None:
    """A field holding a list, or a JSON string of one; null stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"'{name}' is a string but not JSON ({error.msg})") from None
    if not isinstance(value, list):
        raise ValueError(f"'{name}' must be {what}, got {type(value).__name__}")
    return value


def _parse_target(item: Any, position: int, report: ReadReport) -> Target:
    """Check one annotation entry (ValueError naming it when malformed)."""
    where = f"annotation {position}"
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object, got {type(item).__name__}")
    kind = item.get("type", "phrase")
    if kind not in TEXT_TYPES:
        raise ValueError(f"{where}: type {kind!r} is not one of {', '.join(TEXT_TYPES)}")
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: 'text' must be a non-empty string")
    ann_type = item.get("ann_type", "mask")
    if ann_type not in ("mask", "bbox", "point"):
        raise ValueError(f"{where}: ann_type {ann_type!r} is not 'mask', 'bbox' or 'point'")
    ann = item.get("ann")
    if isinstance(ann, str):
        try:
            ann = json.loads(ann)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: 'ann' is a string but not JSON") from None
    if ann is not None and not isinstance(ann, list):
        raise ValueError(f"{where}: 'ann' must be a list of instances or null, got {type(ann).__name__}")
    if ann is None and ann_type == "bbox":
        raise ValueError(f"{where}: a bbox annotation needs its boxes (the release cannot use a null one)")
    if ann_type == "point":
        report.skipped["point annotations (no mask)"] += 1
    elif ann is not None and len(ann) > MAX_INSTANCES_PER_PHRASE:
        report.skipped[f"annotations with more than {MAX_INSTANCES_PER_PHRASE} instances"] += 1
    if kind == "sentence":
        # The model answers a sentence with its category (the short phrase), not the sentence.
        answer = item.get("category") or item.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"{where}: a 'sentence' annotation needs a 'category' to answer with")
        phrase = clean_phrase(answer)
    else:
        phrase = text if kind == "OCR" else clean_phrase(text)
    if not phrase.strip():
        raise ValueError(f"{where}: the phrase is empty after cleaning")
    return Target(phrase=phrase, text=text, kind=kind, ann_type=ann_type, ann=ann)


def _size(raw: dict, required: bool) -> tuple[int | None, int | None]:
    height, width = raw.get("height"), raw.get("width")
    if not required and height is None and width is None:
        return None, None
    if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
        raise ValueError(f"'height' and 'width' must be positive integers, got {height!r} x {width!r}")
    return height, width


def parse_record(raw: Any, source: str, data_root: Path, report: ReadReport) -> Record | None:
    """Check one raw record; None (counted) when nothing of it can be asked. Raises ValueError
    if malformed."""
    if not isinstance(raw, dict):
        raise ValueError(f"a record must be an object, got {type(raw).__name__}")
    if raw.get("video") is not None and raw.get("image") is None:
        raise ValueError("video records cannot be trained on (the release's reader fails on them too)")
    conversation = parse_conversations(_json_list(raw.get("conversations"), "conversations",
                                                  "a list of {from, value} turns"))
    annotation = raw.get("annotation")
    if annotation is None and not conversation:
        raise ValueError("'annotation' is missing" if "annotation" not in raw else
                         "'annotation' is null and there are no 'conversations' turns")
    items = [] if annotation is None else _json_list(annotation, "annotation", "a list")
    image = raw.get("image")
    # Annotations need the image and its size; a conversation alone may be text only.
    if (items or image is not None) and (not isinstance(image, str) or not image):
        raise ValueError("'image' must be a non-empty relative path")
    height, width = _size(raw, required=bool(items))
    masks = _json_list(raw.get("mask"), "mask", "a list of masks or null")
    targets = [_parse_target(item, i, report) for i, item in enumerate(items)]
    if not conversation and not any(t.usable for t in targets):
        report.skipped["records without a usable annotation"] += 1
        return None
    if annotation is not None:
        if masks:
            # The release would pair these with the first answers' query blocks (see training/README.md).
            report.skipped["record-level 'mask' lists beside an 'annotation' (ignored)"] += 1
        masks, carrying = None, sum(t.ann is not None for t in targets)
    else:
        carrying = len(masks or ())
    return Record(source=source, image=None if image is None else data_root / image, height=height, width=width,
                  targets=targets, instseg=bool(items) and raw.get("type") == "instseg",
                  modality_length=carrying or -1, conversation=conversation, masks=masks)


def read_records(path: str | Path, data_root: str | Path, skip_bad: bool = False) -> tuple[list[Record], ReadReport]:
    """Read and check a training JSON file; images are resolved against `data_root`.

    A malformed record raises `RecordError("file:index: ...")`, or is dropped and counted in the
    report with `skip_bad=True`. Masks are decoded later, by `Record.decode_target`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"training file {path} does not exist")
    try:
        with path.open("r", encoding="utf-8") as handle:
            raw_records = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(raw_records, list):
        raise UserError(f"{path}: expected a JSON list of records, got {type(raw_records).__name__}")
    report = ReadReport()
    records: list[Record] = []
    for index, raw in enumerate(raw_records):
        source = f"{path.name}:{index}"
        report.records += 1
        try:
            record = parse_record(raw, source, Path(data_root), report)
        except ValueError as error:
            if not skip_bad:
                raise RecordError(f"{source}: {error}") from None
            report.skipped["malformed records"] += 1
            continue
        if record is not None:
            records.append(record)
    report.samples = len(records)
    return records, report
