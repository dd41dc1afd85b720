"""Reader for the released training JSON and data mixtures."""
import json

import numpy as np
import pytest

from instructsam_core.errors import UserError
from instructsam_core.masks import encode_mask
from instructsam_core.training.mixture import build_mixture, load_mixture_file, parse_mixture, repeat_records
from instructsam_core.training.records import RecordError, read_records

H, W = 3, 4
# Column-major (COCO) runs: 2 zeros, 3 ones, 7 zeros -> ones at (2,0), (0,1), (1,1)
RLE_LIST = {"size": [H, W], "counts": [2, 3, 7]}
RLE_LIST_MASK = np.zeros((H, W), bool)
RLE_LIST_MASK[2, 0] = RLE_LIST_MASK[0, 1] = RLE_LIST_MASK[1, 1] = True


def _ann(text, instances, ann_type="mask", kind="phrase", **extra):
    ann = None if instances is None else [json.dumps(i) for i in instances]
    return {"type": kind, "text": text, "ann_type": ann_type, "ann": ann, **extra}


def _write(tmp_path, records, name="train.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_all_encodings_and_forms(tmp_path):
    hand = np.zeros((H, W), bool)
    hand[:, 3] = True
    compressed = encode_mask(hand)
    records = [
        {"image": "a.png", "height": H, "width": W, "annotation": [
            _ann("Red cup.", [RLE_LIST, compressed]),  # two instances, two RLE forms
            _ann("box thing", [[1, 0, 2, 2]], ann_type="bbox"),  # x y w h
            _ann("unicorn", None),  # no target
        ]},
        # annotation as a JSON string; a sentence answers with its category
        {"image": "b.png", "height": H, "width": W, "annotation": json.dumps([
            _ann("What can I drink from?", [[[0, 0, 3, 0, 3, 2, 0, 2]]], kind="sentence", category="Cup"),
        ])},
        # instseg: one turn with all phrases
        {"image": "c.png", "height": H, "width": W, "type": "instseg", "annotation": [
            _ann("cat", [RLE_LIST]), _ann("dog", None),
        ]},
    ]
    samples, report = read_records(_write(tmp_path, records), tmp_path)
    assert report.records == 3 and report.samples == 3 and not report.skipped
    first = samples[0]
    assert first.image == tmp_path / "a.png"
    assert first.phrases == ["red cup", "box thing", "unicorn"]
    assert len(first.turns) == 3  # one turn per phrase annotation
    assert "red cup" in first.turns[0].instruction.lower()
    masks = first.decode()
    assert [m.shape for m in masks] == [(2, H, W), (1, H, W), (0, H, W)]
    assert np.array_equal(masks[0][0], RLE_LIST_MASK)
    assert np.array_equal(masks[0][1], hand)
    box = np.zeros((H, W), bool)
    box[0:2, 1:3] = True  # pixel centres inside x in [1, 3), y in [0, 2)
    assert np.array_equal(masks[1][0], box)

    sentence = samples[1]
    assert sentence.phrases == ["cup"]
    assert sentence.turns[0].instruction.startswith("What can I drink from?")
    polygon = sentence.decode()[0][0]
    assert polygon[0, 0] and polygon[1, 2] and not polygon[:, 3].any()

    instseg = samples[2]
    assert len(instseg.turns) == 1 and instseg.phrases == ["cat", "dog"]
    assert "cat" in instseg.turns[0].instruction and "dog" in instseg.turns[0].instruction


def test_limits_skip_and_split(tmp_path):
    eleven = [RLE_LIST] * 11
    annotations = [_ann("crowd", eleven)] + [_ann(f"thing {i}", [RLE_LIST]) for i in range(12)]
    samples, report = read_records(_write(tmp_path, [{"image": "a.png", "height": H, "width": W,
                                                      "annotation": annotations}]), tmp_path)
    assert report.skipped["annotations with more than 10 instances"] == 1
    assert [len(s.phrases) for s in samples] == [10, 2]
    assert samples[1].phrases == ["thing 10", "thing 11"]
    assert samples[0].source == "train.json:0" and samples[1].source == "train.json:0#1"


def test_bad_record_names_file_and_index(tmp_path):
    good = {"image": "a.png", "height": H, "width": W, "annotation": [_ann("cup", [RLE_LIST])]}
    bad = {"image": "b.png", "height": H, "annotation": [_ann("cup", [RLE_LIST])]}
    path = _write(tmp_path, [good, good, bad])
    with pytest.raises(RecordError, match=r"train\.json:2: 'height' and 'width'"):
        read_records(path, tmp_path)
    samples, report = read_records(path, tmp_path, skip_bad=True)
    assert len(samples) == 2 and report.skipped["malformed records"] == 1
    assert "1 malformed records" in report.summary()


def test_undecodable_mask_fails_when_used(tmp_path):
    wrong_size = {"size": [H, W], "counts": [2, 3]}  # sums to 5, not 12
    path = _write(tmp_path, [{"image": "a.png", "height": H, "width": W, "annotation": [_ann("cup", [wrong_size])]}])
    samples, _ = read_records(path, tmp_path)
    with pytest.raises(RecordError, match=r"train\.json:0: phrase 'cup'"):
        samples[0].decode()


def test_not_a_list_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_records(tmp_path / "nope.json", tmp_path)
    with pytest.raises(UserError, match="JSON list"):
        read_records(_write(tmp_path, {"image": "a"}), tmp_path)


def test_mixture_repeats(tmp_path):
    record = {"image": "a.png", "height": H, "width": W, "annotation": [_ann("cup", [RLE_LIST])]}
    _write(tmp_path, [record] * 4, "one.json")
    _write(tmp_path, [record] * 2, "two.json")
    mixture = tmp_path / "mix.yaml"
    mixture.write_text("datasets:\n  - {name: one, path: one.json, repeat: 2.5}\n"
                       "  - {name: two, path: two.json, image_root: imgs}\n")
    entries = load_mixture_file(mixture)
    samples, reports = build_mixture(entries, tmp_path)
    assert len(samples) == 4 * 2 + 2 + 2  # 2.5 x 4 = 10, plus 1 x 2
    assert samples[-1].image == tmp_path / "imgs" / "a.png"
    assert reports["one"].samples == 4
    with pytest.raises(UserError, match="repeat must be a positive number"):
        parse_mixture({"datasets": [{"path": "x.json", "repeat": 0}]}, "m.yaml")
    with pytest.raises(UserError, match="unknown keys"):
        parse_mixture([{"path": "x.json", "weight": 2}], "m.yaml")


def test_fractional_repeat_is_seeded():
    items = list(range(10))
    a = repeat_records(items, 1.3, seed=5)
    b = repeat_records(items, 1.3, seed=5)
    assert a == b and len(a) == 13 and a[:10] == items


def test_instseg_single_phrase_fraction(tmp_path):
    record = {"image": "a.png", "height": H, "width": W, "type": "instseg",
              "annotation": [_ann("cat", [RLE_LIST]), _ann("dog", None), _ann("cow", [RLE_LIST])]}
    path = _write(tmp_path, [record] * 40)
    multi, _ = read_records(path, tmp_path)
    assert all(len(s.turns) == 1 and len(s.turns[0].targets) == 3 for s in multi)
    single, _ = read_records(path, tmp_path, instseg_single_fraction=1.0)
    assert all([len(t.targets) for t in s.turns] == [1, 1, 1] for s in single)
    assert [t.targets[0].phrase for t in single[0].turns] == ["cat", "dog", "cow"]
    half, _ = read_records(path, tmp_path, instseg_single_fraction=0.5)
    kinds = [len(s.turns) for s in half]
    assert kinds.count(3) and kinds.count(1)  # both forms occur ...
    assert kinds == [len(s.turns) for s in read_records(path, tmp_path, instseg_single_fraction=0.5)[0]]  # ... fixed
