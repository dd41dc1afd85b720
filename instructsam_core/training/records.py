"""Reader for the released training JSON (Inst2Seg / referring / instance data).

A file is a JSON list of records `{image, height, width, type?, annotation, conversations?}`;
`annotation` is a list (or a JSON string of a list) of
`{type: "phrase"|"sentence"|"OCR", text, category?, ann_type: "mask"|"bbox"|"point", ann, answer?}`
where `ann` holds one encoded mask/box per instance, or null when the text has no target.

Reading is split in two so that a million-record file opens in seconds:
- `read_records` checks every record's structure (types, keys, sizes) up front and fails with
  `file:index: what is wrong`, or, with `skip_bad=True`, drops it and counts why;
- the masks are decoded when a sample is used (`Record.decode`), through `instructsam_core.masks`.

Limits of the release: an annotation with more than 10 instances is dropped; a sample holds at
most 10 phrases (longer records are split into several samples over the same image).
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instructsam_core.errors import UserError
from instructsam_core.masks import MaskFormatError, decode_annotation
from instructsam_core.tokens import normalize_phrase
from instructsam_core.training import templates

MAX_INSTANCES_PER_PHRASE = 10
MAX_PHRASES_PER_SAMPLE = 10
TEXT_TYPES = ("phrase", "sentence", "OCR")


class RecordError(UserError):
    """A training record that cannot be used; the message starts with `file:index`."""


@dataclass
class Target:
    """One thing to segment: the phrase the model answers with and its instances (encoded)."""

    phrase: str
    text: str
    kind: str  # "phrase" | "sentence" | "OCR"
    ann_type: str  # "mask" | "bbox"
    ann: list[Any] | None  # per-instance encodings; None = no target in the image

    @property
    def num_instances(self) -> int:
        return 0 if self.ann is None else len(self.ann)


@dataclass
class Turn:
    """One user instruction and the phrases (in answer order) that answer it."""

    instruction: str
    targets: list[Target]


@dataclass
class Record:
    """One training sample: an image and up to 10 phrases over one or more turns."""

    source: str  # "file.json:index" (for error messages)
    image: Path
    height: int
    width: int
    turns: list[Turn]

    @property
    def phrases(self) -> list[str]:
        return [t.phrase for turn in self.turns for t in turn.targets]

    def decode(self, turn: int | None = None) -> list[np.ndarray]:
        """Per phrase (answer order), a bool [n_instances, height, width] array (n may be 0).

        `turn` restricts it to one turn's phrases.
        """
        out = []
        turns = self.turns if turn is None else [self.turns[turn]]
        for one_turn in turns:
            for target in one_turn.targets:
                try:
                    masks = decode_annotation(target.ann, target.ann_type, self.height, self.width)
                except MaskFormatError as error:
                    raise RecordError(f"{self.source}: phrase {target.phrase!r}: {error}") from None
                if masks:
                    out.append(np.stack(masks).astype(bool))
                else:
                    out.append(np.zeros((0, self.height, self.width), dtype=bool))
        return out


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


def _parse_annotation_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"'annotation' is a string but not JSON ({error.msg})") from None
    if not isinstance(value, list):
        raise ValueError(f"'annotation' must be a list, got {type(value).__name__}")
    return value


def _parse_target(item: Any, position: int, report: ReadReport) -> Target | None:
    """Check one annotation entry; None (counted) for ones the release skips."""
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
    if ann_type == "point":
        report.skipped["point annotations (no mask)"] += 1
        return None
    if ann_type not in ("mask", "bbox"):
        raise ValueError(f"{where}: ann_type {ann_type!r} is not 'mask', 'bbox' or 'point'")
    ann = item.get("ann")
    if isinstance(ann, str):
        try:
            ann = json.loads(ann)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: 'ann' is a string but not JSON") from None
    if ann is not None and not isinstance(ann, list):
        raise ValueError(f"{where}: 'ann' must be a list of instances or null, got {type(ann).__name__}")
    if ann is not None and len(ann) == 0:
        ann = None  # an empty list means the same as null: nothing to segment
    if ann is not None and len(ann) > MAX_INSTANCES_PER_PHRASE:
        report.skipped[f"annotations with more than {MAX_INSTANCES_PER_PHRASE} instances"] += 1
        return None
    if kind == "sentence":
        # The model answers a sentence with its category (the short phrase), not the sentence.
        answer = item.get("category") or item.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"{where}: a 'sentence' annotation needs a 'category' to answer with")
    else:
        answer = text
    phrase = normalize_phrase(answer)
    if not phrase:
        raise ValueError(f"{where}: the phrase is empty after normalisation")
    return Target(phrase=phrase, text=" ".join(text.split()), kind=kind, ann_type=ann_type, ann=ann)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def parse_record(
    raw: Any,
    source: str,
    data_root: Path,
    report: ReadReport,
    seed: int = 0,
    style: str = "varied",
    instseg_single_fraction: float = 0.0,
) -> list[Record]:
    """Turn one raw record into 0..n samples (split at 10 phrases). Raises ValueError if malformed.

    `instseg_single_fraction`: the share of `instseg` records (chosen per record, deterministically)
    whose phrases are asked one per turn instead of in one multi-phrase turn, so that a model also
    sees single-category instructions - the form benchmarks ask in.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"a record must be an object, got {type(raw).__name__}")
    image = raw.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError("'image' must be a non-empty relative path")
    height, width = raw.get("height"), raw.get("width")
    if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
        raise ValueError(f"'height' and 'width' must be positive integers, got {height!r} x {width!r}")
    if "annotation" not in raw:
        raise ValueError("'annotation' is missing")
    items = _parse_annotation_list(raw["annotation"])
    targets = [t for i, item in enumerate(items) if (t := _parse_target(item, i, report)) is not None]
    if not targets:
        report.skipped["records without a usable annotation"] += 1
        return []
    rng = random.Random(f"{seed}:{source}")  # same wording every time this record is read
    multi_phrase = raw.get("type") == "instseg" and rng.random() >= instseg_single_fraction
    samples = []
    for part, chunk in enumerate(_chunks(targets, MAX_PHRASES_PER_SAMPLE)):
        if multi_phrase:
            # Single turn, several categories: one instruction lists them, the answer has them all.
            turns = [Turn(templates.multi_phrase_instruction([t.phrase for t in chunk], rng, style), chunk)]
        else:
            turns = []
            for target in chunk:
                if target.kind == "sentence":
                    instruction = templates.sentence_instruction(target.text, rng, style)
                else:
                    instruction = templates.phrase_instruction(normalize_phrase(target.text), rng, style)
                turns.append(Turn(instruction, [target]))
        name = source if part == 0 else f"{source}#{part}"
        samples.append(Record(source=name, image=data_root / image, height=height, width=width, turns=turns))
    return samples


def read_records(
    path: str | Path,
    data_root: str | Path,
    skip_bad: bool = False,
    seed: int = 0,
    style: str = "varied",
    instseg_single_fraction: float = 0.0,
) -> tuple[list[Record], ReadReport]:
    """Read and check a training JSON file; images are resolved against `data_root`.

    `style` picks the instruction wording (templates.STYLES).
    A malformed record raises `RecordError("file:index: ...")`, or is dropped and counted in the
    report with `skip_bad=True`. Masks are decoded later, by `Record.decode`.
    """
    path = Path(path)
    if style not in templates.STYLES:
        raise UserError(f"instruction style {style!r} is not one of {', '.join(templates.STYLES)}")
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
            records.extend(parse_record(raw, source, Path(data_root), report, seed, style, instseg_single_fraction))
        except ValueError as error:
            if not skip_bad:
                raise RecordError(f"{source}: {error}") from None
            report.skipped["malformed records"] += 1
    report.samples = len(records)
    return records, report
