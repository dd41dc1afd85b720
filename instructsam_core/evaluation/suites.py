"""Readers for the benchmark files: each record becomes one or more evaluation queries.

A suite fixes what the release fixes: the file layout, the prompt wording, the default score
threshold, and the empty-vs-empty rule of gIoU. Formats (reference-design.md "Data formats"):

- `inst2seg`: `{image, height, width, annotation: [{text, mask?}]}`; prompt = text +
  " Please output the segmentation mask."; `mask` missing/null/[] = no target; an RLE or one
  polygon set is one instance, a list of RLEs or of polygon sets is one instance each.
  Threshold 0.3, empty vs empty = 1.
- `reasonseg`: `{question, is_sentence, image, mask, ignore_mask?}` (val or test file); the
  question is used as written, with the same suffix. `is_sentence` splits results into
  "long" and "short". Threshold 0.3, empty vs empty = 0, ignore pixels removed.
- `grefcoco` (category AP form): `{image, height, width, cat: [names], masks: [[instance
  masks] per name]}`; prompt "Can you segment '{name}' in the image?". Threshold 0.3, empty = 1.
- `roborefit`: `{image, question | expression, masks}`; a `question` is used as written, an
  `expression` gets the suffix. Threshold 0.5; reported as mean IoU (gIoU at 0.5).
- `refcoco` (RefCOCO/+/g referring; our own JSON form, the release has none):
  `{image, height?, width?, sentences: [str, ...] | expression: str, mask}` where `mask` is
  the referred object's RLE or polygon set; one query per sentence, prompt = sentence + suffix.
  Threshold 0.3, standard cIoU and gIoU.

Height/width come from the record, else from the first RLE's `size`, else from the image file.
Malformed records raise `UserError` naming the file and record index, or with `skip_bad` are
skipped and counted (`SuiteData.skipped`).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructsam_core.errors import UserError
from instructsam_core.masks import MaskFormatError, decode_mask, encode_mask, validate_rle

SUFFIX = " Please output the segmentation mask."


@dataclass
class EvalQuery:
    """One instruction on one image, with its ground truth as compressed RLEs."""

    record: int
    annotation: int
    image: str  # path relative to the images directory, as written in the data file
    height: int
    width: int
    prompt: str
    phrase: str  # the target phrase (for the single-forward path and for reports)
    gt: list[dict] = field(default_factory=list)
    ignore: dict | None = None
    group: str | None = None  # e.g. "long"/"short" for ReasonSeg

    @property
    def key(self) -> tuple[int, int]:
        return (self.record, self.annotation)


@dataclass
class SuiteData:
    """The queries of a data file, in file order, and what was skipped."""

    suite: "Suite"
    path: Path
    queries: list[EvalQuery]
    num_records: int
    skipped: list[tuple[int, str]] = field(default_factory=list)
    limited: bool = False  # --limit cut the file: later records exist but are not evaluated


@dataclass(frozen=True)
class Suite:
    name: str
    threshold: float
    empty_iou: float
    reader: Callable[[dict, int, "ImageSizer"], list[EvalQuery]]
    description: str


class BadRecord(Exception):
    """A record that cannot be read; the message is completed with file and index by the caller."""


# ----------------------------------------------------------------------------- helpers


class ImageSizer:
    """Finds an image's size when the record does not carry it (reads only the file header)."""

    def __init__(self, images_dir: Path | None) -> None:
        self.images_dir = images_dir

    def __call__(self, image: str) -> tuple[int, int]:
        if self.images_dir is None:
            raise BadRecord("record has no height/width and no --images directory was given to read them from")
        from instructsam_core.images import image_size

        try:
            return image_size(self.images_dir / image)
        except UserError as error:
            raise BadRecord(str(error)) from None


def _require(record: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in record:
        raise BadRecord(f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BadRecord(f"field {key!r} must be {names}, got {type(value).__name__}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(f"{what} must be a non-empty string")
    return " ".join(value.split())


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise BadRecord(f"mask string is not valid JSON: {error}") from None
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_polygon_set(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(p, list) and p and all(_is_number(c) for c in p) for p in value
    )


def _first_rle_size(value: Any) -> tuple[int, int] | None:
    value = _maybe_json(value)
    if isinstance(value, dict) and isinstance(value.get("size"), list) and len(value["size"]) == 2:
        return int(value["size"][0]), int(value["size"][1])
    if isinstance(value, list):
        for item in value:
            size = _first_rle_size(item)
            if size is not None:
                return size
    return None


def decode_instances(value: Any, height: int, width: int) -> list[dict]:
    """Split a benchmark mask field into instance RLEs (see the module docstring).

    None / [] -> no instance; an RLE or a polygon set -> one instance; a list of RLEs, of
    polygon sets, or of JSON strings -> one instance each. Instances are re-encoded as
    compressed RLEs on the image grid, so later code sees one form only.
    """
    value = _maybe_json(value)
    if value is None or (isinstance(value, list) and not value):
        return []
    try:
        if isinstance(value, dict) or _is_polygon_set(value) or (
            isinstance(value, list) and all(_is_number(c) for c in value)
        ):
            return [_to_rle(value, height, width)]
        if isinstance(value, list):
            return [_to_rle(_maybe_json(item), height, width) for item in value]
    except MaskFormatError as error:
        raise BadRecord(str(error)) from None
    raise BadRecord(f"unsupported mask type {type(value).__name__}")


def _to_rle(value: Any, height: int, width: int) -> dict:
    if isinstance(value, dict):
        return validate_rle(value, height, width)
    return _compressed(encode_mask(decode_mask(value, height, width)))


def _compressed(rle: dict) -> dict:
    return {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}


def _size(record: dict, sizer: ImageSizer, image: str, *mask_fields: Any) -> tuple[int, int]:
    if "height" in record or "width" in record:
        height = _require(record, "height", int)
        width = _require(record, "width", int)
        if height <= 0 or width <= 0:
            raise BadRecord(f"height/width must be positive, got {height}x{width}")
        return height, width
    for value in mask_fields:
        try:
            size = _first_rle_size(value)
        except (TypeError, ValueError):
            size = None
        if size is not None and size[0] > 0 and size[1] > 0:
            return size
    return sizer(image)


# ----------------------------------------------------------------------------- readers


def read_inst2seg(record: dict, index: int, sizer: ImageSizer) -> list[EvalQuery]:
    image = _text(record.get("image"), "'image'")
    annotation = record.get("annotation")
    if isinstance(annotation, str):
        annotation = _maybe_json(annotation)
    if not isinstance(annotation, list) or not annotation:
        raise BadRecord("'annotation' must be a non-empty list")
    height, width = _size(record, sizer, image, *[a.get("mask") for a in annotation if isinstance(a, dict)])
    queries = []
    for j, ann in enumerate(annotation):
        if not isinstance(ann, dict):
            raise BadRecord(f"annotation {j} must be an object")
        try:
            text = _text(ann.get("text"), "'text'")
            gt = decode_instances(ann.get("mask"), height, width)
        except BadRecord as error:
            raise BadRecord(f"annotation {j}: {error}") from None
        queries.append(EvalQuery(index, j, image, height, width, text + SUFFIX, text, gt))
    return queries


def read_reasonseg(record: dict, index: int, sizer: ImageSizer) -> list[EvalQuery]:
    image = _text(record.get("image"), "'image'")
    question = _text(record.get("question"), "'question'")
    is_sentence = record.get("is_sentence", False)
    if not isinstance(is_sentence, bool):
        raise BadRecord("'is_sentence' must be true or false")
    if "mask" not in record:
        raise BadRecord("missing field 'mask'")
    height, width = _size(record, sizer, image, record.get("mask"), record.get("ignore_mask"))
    gt = decode_instances(record["mask"], height, width)
    ignore = None
    if record.get("ignore_mask") is not None:
        parts = decode_instances(record["ignore_mask"], height, width)
        if parts:
            from pycocotools import mask as coco_mask

            ignore = parts[0] if len(parts) == 1 else coco_mask.merge(parts, intersect=False)
    group = "long" if is_sentence else "short"
    return [EvalQuery(index, 0, image, height, width, question + SUFFIX, question, gt, ignore, group)]


def read_grefcoco(record: dict, index: int, sizer: ImageSizer) -> list[EvalQuery]:
    image = _text(record.get("image"), "'image'")
    names = _require(record, "cat", list)
    masks = _require(record, "masks", list)
    if not names:
        raise BadRecord("'cat' is empty")
    if len(names) != len(masks):
        raise BadRecord(f"'cat' has {len(names)} names but 'masks' has {len(masks)} entries")
    height, width = _size(record, sizer, image, *masks)
    queries = []
    for j, (name, instances) in enumerate(zip(names, masks)):
        try:
            name = _text(name, "category name")
            gt = decode_instances(instances, height, width)
        except BadRecord as error:
            raise BadRecord(f"category {j}: {error}") from None
        queries.append(EvalQuery(index, j, image, height, width, f"Can you segment '{name}' in the image?", name, gt))
    return queries


def read_roborefit(record: dict, index: int, sizer: ImageSizer) -> list[EvalQuery]:
    image = _text(record.get("image"), "'image'")
    if record.get("question") is not None:
        text = _text(record["question"], "'question'")
        prompt = text
    elif record.get("expression") is not None:
        text = _text(record["expression"], "'expression'")
        prompt = text + SUFFIX
    else:
        raise BadRecord("needs 'question' or 'expression'")
    if "masks" not in record:
        raise BadRecord("missing field 'masks'")
    height, width = _size(record, sizer, image, record["masks"])
    gt = decode_instances(record["masks"], height, width)
    return [EvalQuery(index, 0, image, height, width, prompt, text, gt)]


def read_refcoco(record: dict, index: int, sizer: ImageSizer) -> list[EvalQuery]:
    image = _text(record.get("image"), "'image'")
    if "sentences" in record:
        sentences = _require(record, "sentences", list)
        if not sentences:
            raise BadRecord("'sentences' is empty")
        texts = [_text(s, f"sentence {k}") for k, s in enumerate(sentences)]
    else:
        texts = [_text(record.get("expression"), "'expression'")]
    if record.get("mask") is None:
        raise BadRecord("missing field 'mask'")
    height, width = _size(record, sizer, image, record["mask"])
    mask = _maybe_json(record["mask"])
    try:
        # One referred object: a list of parts (polygons or RLEs) is unioned, not split.
        gt = [_to_rle(mask, height, width)]
    except MaskFormatError as error:
        raise BadRecord(str(error)) from None
    return [EvalQuery(index, k, image, height, width, t + SUFFIX, t, gt) for k, t in enumerate(texts)]


SUITES: dict[str, Suite] = {
    "inst2seg": Suite("inst2seg", 0.3, 1.0, read_inst2seg, "Inst2Seg-Bench: instance mAP + gIoU"),
    "reasonseg": Suite("reasonseg", 0.3, 0.0, read_reasonseg, "ReasonSeg val/test: gIoU, cIoU (long/short)"),
    "grefcoco": Suite("grefcoco", 0.3, 1.0, read_grefcoco, "gRefCOCO category AP form"),
    "roborefit": Suite("roborefit", 0.5, 1.0, read_roborefit, "RoboRefIt: mean IoU at score 0.5"),
    "refcoco": Suite("refcoco", 0.3, 1.0, read_refcoco, "RefCOCO/+/g referring: cIoU, gIoU"),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise UserError(f"unknown suite {name!r} (choose from {', '.join(SUITES)})")
    return SUITES[name]


def load_records(path: Path) -> list:
    """A JSON list, or JSON lines (one record per line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"data file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"data file {path} cannot be read: {error}") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON ({error})") from None
        return records
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: line {number} is not valid JSON ({error})") from None
    if not records:
        raise UserError(f"{path}: no records (expected a JSON list or JSON lines)")
    return records


def read_suite(
    name: str,
    path: str | Path,
    images_dir: str | Path | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
) -> SuiteData:
    """Read a suite's data file into queries. `limit` keeps the first N records."""
    suite = get_suite(name)
    path = Path(path)
    records = load_records(path)
    if isinstance(records, dict):
        raise UserError(f"{path}: expected a list of records, got a JSON object")
    limited = limit is not None and limit < len(records)
    if limit is not None:
        if limit <= 0:
            raise UserError(f"--limit must be positive, got {limit}")
        records = records[:limit]
    sizer = ImageSizer(Path(images_dir) if images_dir is not None else None)
    queries: list[EvalQuery] = []
    skipped: list[tuple[int, str]] = []
    for index, record in enumerate(records):
        try:
            if not isinstance(record, dict):
                raise BadRecord(f"expected an object, got {type(record).__name__}")
            queries.extend(suite.reader(record, index, sizer))
        except (BadRecord, MaskFormatError) as error:
            if not skip_bad:
                raise UserError(f"{path}: record {index}: {error} (use --skip-bad to skip such records)") from None
            skipped.append((index, str(error)))
    if not queries:
        raise UserError(f"{path}: no usable {name} queries" + (f" ({len(skipped)} records skipped)" if skipped else ""))
    return SuiteData(suite, path, queries, len(records), skipped, limited)
