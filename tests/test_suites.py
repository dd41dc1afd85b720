"""Suite readers: prompts, thresholds, instance splitting, and errors that name file and record."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instructsam_core.errors import UserError
from instructsam_core.evaluation.suites import SUITES, decode_instances, read_suite
from instructsam_core.masks import encode_mask, rle_to_mask

H, W = 6, 8


def block(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def write(tmp_path: Path, records, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_suite_defaults():
    assert {n: (s.threshold, s.empty_iou) for n, s in SUITES.items()} == {
        "inst2seg": (0.3, 1.0),
        "reasonseg": (0.3, 0.0),
        "grefcoco": (0.3, 1.0),
        "roborefit": (0.5, 1.0),
        "refcoco": (0.3, 1.0),
    }


def test_decode_instances_splits_lists_but_not_polygon_sets():
    a, b = block(0, 2, 0, 2), block(3, 5, 3, 6)
    assert decode_instances(None, H, W) == [] and decode_instances([], H, W) == []
    assert len(decode_instances(encode_mask(a), H, W)) == 1
    two = decode_instances([encode_mask(a), json.dumps(encode_mask(b))], H, W)
    assert [int(rle_to_mask(r).sum()) for r in two] == [4, 6]
    # One polygon set with two parts = one instance; a list of two polygon sets = two.
    one_set = [[0, 0, 2, 0, 2, 2, 0, 2], [4, 4, 6, 4, 6, 6, 4, 6]]
    assert len(decode_instances(one_set, H, W)) == 1
    assert rle_to_mask(decode_instances(one_set, H, W)[0]).sum() == 8
    assert len(decode_instances([[one_set[0]], [one_set[1]]], H, W)) == 2


def test_inst2seg_reader(tmp_path):
    a, b = block(0, 2, 0, 2), block(3, 5, 3, 6)
    records = [
        {"image": "x.png", "height": H, "width": W, "annotation": [
            {"text": "Red circles.", "mask": [encode_mask(a), encode_mask(b)]},
            {"text": "the blue square"},  # no target
            {"text": "ring", "mask": None},
        ]},
        {"image": "y.png", "height": H, "width": W, "annotation": [{"text": "a", "mask": encode_mask(a)}]},
    ]
    data = read_suite("inst2seg", write(tmp_path, records))
    assert [q.key for q in data.queries] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    first = data.queries[0]
    assert first.prompt == "Red circles. Please output the segmentation mask."
    assert [rle_to_mask(r).sum() for r in first.gt] == [4, 6]
    assert data.queries[1].gt == [] and data.queries[2].gt == []
    assert data.suite.threshold == 0.3 and data.num_records == 2
    assert len(read_suite("inst2seg", write(tmp_path, records), limit=1).queries) == 3


def test_reasonseg_reader_groups_and_ignore(tmp_path):
    records = [
        {"image": "a.jpg", "question": "what could hold water?", "is_sentence": True,
         "mask": encode_mask(block(0, 2, 0, 2)), "ignore_mask": encode_mask(block(5, 6, 0, 8))},
        {"image": "b.jpg", "question": "the cup", "is_sentence": False, "mask": encode_mask(block(1, 3, 1, 3))},
    ]
    data = read_suite("reasonseg", write(tmp_path, records))
    assert [q.group for q in data.queries] == ["long", "short"]
    assert (data.queries[0].height, data.queries[0].width) == (H, W)  # from the RLE size
    assert rle_to_mask(data.queries[0].ignore).sum() == 8 and data.queries[1].ignore is None
    assert data.queries[0].prompt == "what could hold water? Please output the segmentation mask."


def test_reasonseg_size_from_the_image_file(tmp_path):
    Image.new("RGB", (W, H)).save(tmp_path / "c.png")
    polygon = [[0, 0, 4, 0, 4, 4, 0, 4]]
    records = [{"image": "c.png", "question": "q", "is_sentence": False, "mask": polygon}]
    data = read_suite("reasonseg", write(tmp_path, records), images_dir=tmp_path)
    assert (data.queries[0].height, data.queries[0].width) == (H, W)
    assert rle_to_mask(data.queries[0].gt[0]).sum() == 16
    with pytest.raises(UserError, match="record 0: .*no --images"):
        read_suite("reasonseg", write(tmp_path, records))


def test_grefcoco_reader(tmp_path):
    records = [{"image": "g.jpg", "height": H, "width": W, "cat": ["dog", "cat"],
                "masks": [[encode_mask(block(0, 1, 0, 1)), encode_mask(block(2, 3, 2, 3))], []]}]
    data = read_suite("grefcoco", write(tmp_path, records))
    assert [q.prompt for q in data.queries] == ["Can you segment 'dog' in the image?", "Can you segment 'cat' in the image?"]
    assert [len(q.gt) for q in data.queries] == [2, 0] and data.queries[1].phrase == "cat"


def test_roborefit_and_refcoco_readers(tmp_path):
    rle = encode_mask(block(0, 3, 0, 3))
    robo = [
        {"image": "r.png", "question": "Which object can I drink from?", "masks": rle},
        {"image": "s.png", "expression": "the red mug", "masks": [rle]},
    ]
    data = read_suite("roborefit", write(tmp_path, robo))
    assert data.suite.threshold == 0.5
    assert [q.prompt for q in data.queries] == [
        "Which object can I drink from?",
        "the red mug Please output the segmentation mask.",
    ]
    ref = [{"image": "c.jpg", "height": H, "width": W, "sentences": ["left man", "man in red"],
            "mask": [[0, 0, 3, 0, 3, 3, 0, 3], [5, 3, 8, 3, 8, 6, 5, 6]]}]
    data = read_suite("refcoco", write(tmp_path, ref, "ref.json"))
    assert [q.key for q in data.queries] == [(0, 0), (0, 1)]
    assert len(data.queries[0].gt) == 1 and rle_to_mask(data.queries[0].gt[0]).sum() == 18  # two parts, one object


@pytest.mark.parametrize(
    "suite, bad, pattern",
    [
        ("inst2seg", {"image": "x.png", "height": H, "width": W, "annotation": []}, "non-empty list"),
        ("inst2seg", {"image": "x.png", "height": H, "width": W, "annotation": [{"mask": None}]}, "annotation 0: 'text'"),
        ("inst2seg", {"image": "x.png", "height": H, "width": W,
                      "annotation": [{"text": "a", "mask": {"size": [H, W], "counts": [1, 2]}}]}, "sum to 3"),
        ("inst2seg", {"image": "x.png", "height": H, "width": W,
                      "annotation": [{"text": "a", "mask": {"size": [H + 1, W], "counts": [(H + 1) * W]}}]}, "does not match"),
        ("reasonseg", {"image": "a", "question": "q", "is_sentence": "yes", "mask": None}, "is_sentence"),
        ("grefcoco", {"image": "g", "height": H, "width": W, "cat": ["a", "b"], "masks": [[]]}, "2 names"),
        ("roborefit", {"image": "r", "masks": []}, "question"),
        ("refcoco", {"image": "c", "height": H, "width": W, "sentences": [], "mask": []}, "empty"),
        ("inst2seg", [1, 2], "expected an object"),
    ],
)
def test_malformed_records_name_file_and_index(tmp_path, suite, bad, pattern):
    good = {
        "inst2seg": {"image": "x.png", "height": H, "width": W, "annotation": [{"text": "ok"}]},
        "reasonseg": {"image": "a", "question": "q", "is_sentence": False, "mask": encode_mask(block(0, 1, 0, 1))},
        "grefcoco": {"image": "g", "height": H, "width": W, "cat": ["a"], "masks": [[]]},
        "roborefit": {"image": "r", "expression": "e", "masks": encode_mask(block(0, 1, 0, 1))},
        "refcoco": {"image": "c", "height": H, "width": W, "expression": "e", "mask": encode_mask(block(0, 1, 0, 1))},
    }[suite]
    path = write(tmp_path, [good, bad, good])
    with pytest.raises(UserError, match=pattern) as info:
        read_suite(suite, path)
    message = str(info.value)
    assert str(path) in message and "record 1" in message and "\n" not in message
    data = read_suite(suite, path, skip_bad=True)
    assert [index for index, _ in data.skipped] == [1]
    assert {q.record for q in data.queries} == {0, 2}  # indices stay those of the file


def test_file_level_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_suite("inst2seg", tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_suite("inst2seg", tmp_path / "broken.json")
    with pytest.raises(UserError, match="unknown suite"):
        read_suite("coco", tmp_path / "broken.json")
    lines = tmp_path / "lines.jsonl"
    lines.write_text(json.dumps({"image": "x", "height": H, "width": W, "annotation": [{"text": "t"}]}) + "\n")
    assert len(read_suite("inst2seg", lines).queries) == 1
