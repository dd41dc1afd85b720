"""Mask decoding/encoding: every released form gives the pixels worked out by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from instructsam_core.errors import UserError
from instructsam_core.masks import (
    MaskFormatError,
    decode_annotation,
    decode_bbox,
    decode_mask,
    encode_mask,
    mask_iou,
    rle_area,
    rle_iou_matrix,
)


def _grid(h: int, w: int, cells: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    for r, c in cells:
        mask[r, c] = True
    return mask


def test_uncompressed_rle_is_column_major():
    # 3x4 grid, column-major runs: 2 background, 3 foreground, 7 background.
    # Column-major order: (0,0) (1,0) (2,0) (0,1) (1,1) ... -> foreground (2,0) (0,1) (1,1).
    mask = decode_mask({"size": [3, 4], "counts": [2, 3, 7]}, 3, 4)
    assert mask.dtype == bool and mask.shape == (3, 4)
    np.testing.assert_array_equal(mask, _grid(3, 4, [(2, 0), (0, 1), (1, 1)]))


def test_compressed_rle_round_trip_string_bytes_and_json():
    expected = _grid(5, 7, [(0, 0), (4, 6), (2, 3), (2, 4), (3, 3)])
    rle = encode_mask(expected)
    assert rle["size"] == [5, 7] and isinstance(rle["counts"], str)
    json.dumps(rle)  # JSON-safe
    np.testing.assert_array_equal(decode_mask(rle, 5, 7), expected)
    np.testing.assert_array_equal(decode_mask({"size": [5, 7], "counts": rle["counts"].encode()}), expected)
    np.testing.assert_array_equal(decode_mask(json.dumps(rle), 5, 7), expected)
    np.testing.assert_array_equal(decode_mask(json.dumps(rle).encode(), 5, 7), expected)
    assert rle_area(rle) == 5


def test_polygon_square_fills_expected_pixels():
    # Square with corners (1,1) and (4,4): pycocotools rasterises it as the 3x3 block of pixels
    # rows 1..3, columns 1..3 (its area is 9 = 3*3).
    mask = decode_mask([[1, 1, 4, 1, 4, 4, 1, 4]], 6, 6)
    expected = np.zeros((6, 6), dtype=bool)
    expected[1:4, 1:4] = True
    np.testing.assert_array_equal(mask, expected)
    # A flat polygon (not wrapped in a list) means the same thing.
    np.testing.assert_array_equal(decode_mask([1, 1, 4, 1, 4, 4, 1, 4], 6, 6), expected)


def test_lists_of_parts_are_unioned():
    a = _grid(4, 4, [(0, 0), (1, 1)])
    b = _grid(4, 4, [(3, 3), (1, 1)])
    union = decode_mask([encode_mask(a), encode_mask(b)], 4, 4)
    np.testing.assert_array_equal(union, a | b)
    # A list of polygon sets.
    two_sets = [[[0, 0, 2, 0, 2, 2, 0, 2]], [[3, 3, 5, 3, 5, 5, 3, 5]]]
    mask = decode_mask(two_sets, 6, 6)
    assert mask.sum() == 8  # two 2x2 blocks
    assert mask[0:2, 0:2].all() and mask[3:5, 3:5].all()
    # A list of JSON strings (the training `ann` elements themselves).
    np.testing.assert_array_equal(decode_mask([json.dumps(encode_mask(a)), json.dumps(encode_mask(b))]), a | b)


def test_bbox_fills_box_and_clips():
    mask = decode_bbox([1, 2, 3, 2], 5, 6)  # columns 1..3, rows 2..3
    expected = np.zeros((5, 6), dtype=bool)
    expected[2:4, 1:4] = True
    np.testing.assert_array_equal(mask, expected)
    # the release's rule: corner clipped at 0 and truncated, sizes truncated and cut at the image edge
    # (not shortened by the clipped part): x0 4, w min(10, 6 - 4) = 2; y0 0, h min(2, 5 - 0) = 2
    clipped = decode_bbox([4, -1, 10, 2], 5, 6)
    assert clipped.sum() == 4 and clipped[0:2, 4:6].all()
    truncated = decode_bbox([0.9, 1.7, 2.9, 1.2], 5, 6)  # x0 0, w 2; y0 1, h 1
    assert truncated.sum() == 2 and truncated[1, 0:2].all()


def test_decode_annotation_forms():
    a = _grid(4, 5, [(1, 2)])
    masks = decode_annotation([json.dumps(encode_mask(a)), json.dumps([[0, 0, 2, 0, 2, 2, 0, 2]])], "mask", 4, 5)
    assert len(masks) == 2
    np.testing.assert_array_equal(masks[0], a)
    assert masks[1].sum() == 4
    assert decode_annotation(None, "mask", 4, 5) == []
    boxes = decode_annotation(["[0, 0, 2, 1]"], "bbox", 4, 5)
    assert boxes[0].sum() == 2
    with pytest.raises(MaskFormatError, match="point"):
        decode_annotation(["[1, 1]"], "point", 4, 5)


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ({"size": [3, 4], "counts": [2, 3, 6]}, "sum to 11"),
        ({"size": [3, 4], "counts": [2, -3, 13]}, "negative"),
        ({"size": [3, 5], "counts": [15]}, "does not match"),
        ({"size": [3], "counts": [12]}, "size"),
        ({"counts": [12]}, "size"),
        ([[0, 0, 2, 0, 2]], "odd"),
        ([[0, 0, 2, 0]], "at least 3"),
        ("not json", "not JSON"),
        ("[1, 2", "not valid JSON"),
        (42, "unsupported"),
        ({"size": [3, 4], "counts": "1"}, "cover"),
    ],
)
def test_malformed_masks_raise_clear_errors(bad, pattern):
    with pytest.raises(MaskFormatError, match=pattern) as info:
        decode_mask(bad, 3, 4)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_bad_bbox_and_missing_size():
    with pytest.raises(MaskFormatError):
        decode_bbox([0, 0, -1, 2], 3, 3)
    with pytest.raises(MaskFormatError):
        decode_bbox([0, 0, 1], 3, 3)
    with pytest.raises(MaskFormatError, match="height and width"):
        decode_mask([[0, 0, 2, 0, 2, 2]])


def test_iou_by_hand():
    a = np.zeros((4, 4), dtype=bool)
    a[0:2, 0:2] = True  # 4 pixels
    b = np.zeros((4, 4), dtype=bool)
    b[1:3, 1:3] = True  # 4 pixels, overlap 1 -> IoU 1/7
    assert mask_iou(a, b) == pytest.approx(1 / 7)
    assert mask_iou(a, a) == pytest.approx(1.0)
    empty = np.zeros((4, 4), dtype=bool)
    assert mask_iou(empty, empty) == 0.0
    matrix = rle_iou_matrix([encode_mask(a), encode_mask(b)], [encode_mask(b)])
    np.testing.assert_allclose(matrix, [[1 / 7], [1.0]])
    assert rle_iou_matrix([], [encode_mask(a)]).shape == (0, 1)
    with pytest.raises(MaskFormatError, match="size"):
        mask_iou(a, np.zeros((3, 4), dtype=bool))
