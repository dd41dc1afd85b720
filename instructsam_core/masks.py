"""Instance masks in every form the released annotation files use, decoded to one pixel grid.

The released data mixes polygons, uncompressed RLE (list counts), compressed COCO RLE (string
counts), lists of those (one instance split in parts, unioned), boxes, and JSON strings that wrap
any of them. Training and evaluation both need the same answer for "which pixels are this
instance", so every reader goes through `decode_mask`. RLE arithmetic (encode, area, IoU) is done
by pycocotools so that our numbers agree with the COCO tooling everybody else uses.

Malformed input raises `MaskFormatError` (a `UserError` and a `ValueError`), with a one-line
message; readers add the file name and record index.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from instructsam_core.errors import UserError

__all__ = [
    "MaskFormatError",
    "decode_mask",
    "decode_annotation",
    "decode_bbox",
    "encode_mask",
    "rle_to_mask",
    "rle_area",
    "mask_iou",
    "rle_iou_matrix",
    "validate_rle",
]


class MaskFormatError(UserError, ValueError):
    """An annotation mask that cannot be decoded (wrong size, odd polygon, negative counts...)."""


# ----------------------------------------------------------------------------- helpers


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_dims(height: int | None, width: int | None) -> None:
    for name, value in (("height", height), ("width", width)):
        if value is None:
            continue
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise MaskFormatError(f"image {name} must be a positive integer, got {value!r}")


def _maybe_json(value: Any) -> Any:
    """Unwrap JSON-encoded strings (the released `ann` lists hold one JSON string per instance)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise MaskFormatError(f"mask bytes are not UTF-8 JSON: {error}") from None
    if isinstance(value, str):
        text = value.strip()
        if not text or text[0] not in "[{":
            raise MaskFormatError(f"mask string is not JSON (starts with {text[:20]!r})")
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise MaskFormatError(f"mask string is not valid JSON: {error}") from None
    return value


def _size_of_rle(rle: dict, height: int | None, width: int | None) -> tuple[int, int]:
    size = rle.get("size")
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
        or size[0] < 0
        or size[1] < 0
    ):
        raise MaskFormatError(f"RLE 'size' must be [height, width] integers, got {size!r}")
    h, w = int(size[0]), int(size[1])
    if (height is not None and h != height) or (width is not None and w != width):
        raise MaskFormatError(f"RLE size {h}x{w} does not match the image size {height}x{width}")
    return h, w


def validate_rle(rle: Any, height: int | None = None, width: int | None = None) -> dict:
    """Check an RLE dict and return it in pycocotools' compressed form (bytes counts).

    Uncompressed counts must be non-negative integers summing to height*width; compressed
    counts must decode to the declared size.
    """
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise MaskFormatError("an RLE must be a dict with 'size' and 'counts'")
    h, w = _size_of_rle(rle, height, width)
    counts = rle["counts"]
    if isinstance(counts, (list, tuple)):
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts):
            raise MaskFormatError("uncompressed RLE counts must be integers")
        if any(c < 0 for c in counts):
            raise MaskFormatError("uncompressed RLE counts must not be negative")
        total = int(sum(int(c) for c in counts))
        if total != h * w:
            raise MaskFormatError(f"uncompressed RLE counts sum to {total}, expected {h}*{w}={h * w}")
        if h == 0 or w == 0:
            return {"size": [h, w], "counts": b""}
        return coco_mask.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="strict") if counts.isascii() else None
        if counts is None:
            raise MaskFormatError("compressed RLE counts must be an ASCII string")
    if not isinstance(counts, (bytes, bytearray)):
        raise MaskFormatError(f"RLE counts must be a list or a string, got {type(rle['counts']).__name__}")
    compressed = {"size": [h, w], "counts": bytes(counts)}
    try:
        decoded = _decode(compressed)
    except Exception as error:  # pycocotools raises a bare ValueError/Exception text
        raise MaskFormatError(f"compressed RLE does not decode: {error}") from None
    if decoded.shape != (h, w):
        raise MaskFormatError(f"compressed RLE decodes to {decoded.shape}, expected {(h, w)}")
    # pycocotools accepts strings whose runs do not cover the whole grid; re-check the length.
    if _compressed_length(bytes(counts)) != h * w:
        raise MaskFormatError(f"compressed RLE counts do not cover the {h}x{w} grid")
    return compressed


def _compressed_length(counts: bytes) -> int:
    """Total run length of a COCO compressed counts string (LEB128-like, 5 bits per char)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value = 0
        shift = 0
        more = True
        while more:
            if position >= len(counts):
                raise MaskFormatError("compressed RLE counts are truncated")
            char = counts[position] - 48
            if char < 0 or char > 63:
                raise MaskFormatError("compressed RLE counts hold an invalid character")
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            position += 1
            shift += 1
            if not more and (char & 0x10):
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise MaskFormatError("compressed RLE counts decode to a negative run")
        runs.append(value)
    return int(sum(runs))


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode one (validated) RLE to a bool [H, W] array."""
    h, w = int(rle["size"][0]), int(rle["size"][1])
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    return _decode(rle).astype(bool)


def _decode(rle: dict) -> np.ndarray:
    # pycocotools 2.0.x under numpy 2 warns about `copy=` on every decode; the result is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(rle)


def _polygon_parts(polygons: Sequence[Any]) -> list[list[float]]:
    parts: list[list[float]] = []
    for index, polygon in enumerate(polygons):
        if not isinstance(polygon, (list, tuple)) or not all(_is_number(v) for v in polygon):
            raise MaskFormatError(f"polygon {index} must be a flat list of numbers [x, y, ...]")
        if len(polygon) % 2:
            raise MaskFormatError(f"polygon {index} has an odd number of coordinates ({len(polygon)})")
        if len(polygon) < 6:
            raise MaskFormatError(f"polygon {index} has {len(polygon) // 2} points, at least 3 are needed")
        values = [float(v) for v in polygon]
        if not all(math.isfinite(v) for v in values):
            raise MaskFormatError(f"polygon {index} holds a non-finite coordinate")
        parts.append(values)
    return parts


def _polygons_to_mask(polygons: Sequence[Any], height: int | None, width: int | None) -> np.ndarray:
    if height is None or width is None:
        raise MaskFormatError("a polygon mask needs the image height and width")
    parts = _polygon_parts(polygons)
    if not parts:
        return np.zeros((height, width), dtype=bool)
    rles = coco_mask.frPyObjects(parts, height, width)
    return rle_to_mask(coco_mask.merge(rles, intersect=False))


def decode_bbox(box: Any, height: int, width: int) -> np.ndarray:
    """Fill an [x, y, w, h] box (pixels, clipped to the image) as a mask, the release's way.

    Why: box-only annotations can train the mask head with a coarse target. As in the release's
    dataset, the corner is clipped at 0 and truncated, x0 = int(max(x, 0)), and so are the sizes,
    w' = int(min(w, width - x0)) (likewise for y and h): rows y0 .. y0 + h' - 1 and columns
    x0 .. x0 + w' - 1 are inside.
    """
    _check_dims(height, width)
    box = _maybe_json(box) if isinstance(box, (str, bytes, bytearray)) else box
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise MaskFormatError(f"a bbox must be [x, y, w, h] numbers, got {box!r}")
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise MaskFormatError("a bbox holds a non-finite value")
    if w < 0 or h < 0:
        raise MaskFormatError(f"a bbox must have non-negative width and height, got {box!r}")
    mask = np.zeros((height, width), dtype=bool)
    c0, r0 = int(max(x, 0.0)), int(max(y, 0.0))
    c1, r1 = c0 + int(min(w, width - c0)), r0 + int(min(h, height - r0))
    if c1 > c0 and r1 > r0:
        mask[r0:r1, c0:c1] = True
    return mask


# ----------------------------------------------------------------------------- decoding


def decode_mask(obj: Any, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Decode one annotation mask of any released form to a bool [height, width] array.

    Accepted: a polygon set (list of flat [x, y, ...] lists) or one flat polygon; an RLE dict
    with list or string/bytes counts; a list of RLEs or of polygon sets (their union); a JSON
    string (or bytes) of any of these; a numpy bool/0-1 array. Height and width may be omitted
    for RLEs (their `size` is used); polygons need them.
    """
    _check_dims(height, width)
    obj = _maybe_json(obj)
    if isinstance(obj, np.ndarray):
        if obj.ndim != 2:
            raise MaskFormatError(f"a mask array must be 2-D, got shape {obj.shape}")
        if (height is not None and obj.shape[0] != height) or (width is not None and obj.shape[1] != width):
            raise MaskFormatError(f"mask array shape {obj.shape} does not match the image {height}x{width}")
        return obj.astype(bool)
    if isinstance(obj, dict):
        return rle_to_mask(validate_rle(obj, height, width))
    if isinstance(obj, (list, tuple)):
        if len(obj) == 0:
            if height is None or width is None:
                raise MaskFormatError("an empty mask list needs the image height and width")
            return np.zeros((height, width), dtype=bool)
        if all(_is_number(v) for v in obj):
            # One flat polygon [x, y, x, y, ...].
            return _polygons_to_mask([obj], height, width)
        if all(isinstance(v, (list, tuple)) and all(_is_number(u) for u in v) for v in obj):
            return _polygons_to_mask(obj, height, width)
        # A list of parts (RLEs, polygon sets, JSON strings): decode each and take the union.
        union: np.ndarray | None = None
        for index, part in enumerate(obj):
            try:
                part_mask = decode_mask(part, height, width)
            except MaskFormatError as error:
                raise MaskFormatError(f"mask part {index}: {error}") from None
            if union is None:
                union = part_mask.copy()
            else:
                if part_mask.shape != union.shape:
                    raise MaskFormatError(f"mask part {index} has size {part_mask.shape}, others {union.shape}")
                union |= part_mask
                continue
            height, width = union.shape  # later parts must agree with the first
        assert union is not None
        return union
    raise MaskFormatError(f"unsupported mask type {type(obj).__name__}")


def decode_annotation(
    ann: Any, ann_type: str, height: int, width: int
) -> list[np.ndarray]:
    """Decode a training annotation's `ann` field (list of per-instance encodings, or null).

    Returns one bool mask per instance; `ann: null` (no target) gives an empty list. `ann_type`
    "mask" uses `decode_mask`, "bbox" fills boxes; "point" annotations carry no mask and are
    rejected so that a caller never trains a mask head on them by accident.
    """
    _check_dims(height, width)
    if ann is None:
        return []
    if isinstance(ann, (str, bytes, bytearray)):
        ann = _maybe_json(ann)
        if ann is None:
            return []
    if not isinstance(ann, (list, tuple)):
        raise MaskFormatError(f"'ann' must be a list of instances or null, got {type(ann).__name__}")
    if ann_type not in ("mask", "bbox"):
        raise MaskFormatError(f"ann_type {ann_type!r} has no mask (expected 'mask' or 'bbox')")
    masks = []
    for index, instance in enumerate(ann):
        try:
            if ann_type == "bbox":
                masks.append(decode_bbox(instance, height, width))
            else:
                masks.append(decode_mask(instance, height, width))
        except MaskFormatError as error:
            raise MaskFormatError(f"instance {index}: {error}") from None
    return masks


# ----------------------------------------------------------------------------- encoding and IoU


def encode_mask(mask: np.ndarray) -> dict:
    """Encode a bool [H, W] mask as a JSON-safe COCO RLE `{"size": [h, w], "counts": str}`."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise MaskFormatError(f"encode_mask needs a 2-D mask, got shape {mask.shape}")
    h, w = mask.shape
    if h == 0 or w == 0:
        return {"size": [int(h), int(w)], "counts": ""}
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}


def _as_compressed(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, str):
        return {"size": list(rle["size"]), "counts": counts.encode("ascii")}
    if isinstance(counts, (list, tuple)):
        return validate_rle(rle)
    return rle


def rle_area(rle: dict) -> int:
    """Foreground pixel count of an RLE (either counts form)."""
    rle = _as_compressed(rle)
    if rle["size"][0] == 0 or rle["size"][1] == 0:
        return 0
    return int(coco_mask.area(rle))


def mask_iou(a: np.ndarray | dict, b: np.ndarray | dict) -> float:
    """IoU of two masks (arrays or RLEs) of the same size; 0.0 when both are empty."""
    ra = encode_mask(a) if isinstance(a, np.ndarray) else a
    rb = encode_mask(b) if isinstance(b, np.ndarray) else b
    if list(ra["size"]) != list(rb["size"]):
        raise MaskFormatError(f"mask sizes differ: {ra['size']} vs {rb['size']}")
    return float(rle_iou_matrix([ra], [rb])[0, 0])


def rle_iou_matrix(predictions: Sequence[dict], targets: Sequence[dict]) -> np.ndarray:
    """IoU of every prediction (rows) with every target (columns), through pycocotools.

    Empty-vs-empty pairs give 0 (pycocotools' convention); suites that score empty-vs-empty
    as a hit handle that case themselves.
    """
    if len(predictions) == 0 or len(targets) == 0:
        return np.zeros((len(predictions), len(targets)), dtype=np.float64)
    dts = [_as_compressed(r) for r in predictions]
    gts = [_as_compressed(r) for r in targets]
    sizes = {tuple(r["size"]) for r in dts + gts}
    if len(sizes) != 1:
        raise MaskFormatError(f"masks of different sizes cannot be compared: {sorted(sizes)}")
    if 0 in next(iter(sizes)):
        return np.zeros((len(dts), len(gts)), dtype=np.float64)
    result = coco_mask.iou(dts, gts, [0] * len(gts))
    return np.asarray(result, dtype=np.float64).reshape(len(dts), len(gts))
