"""Reader for the released training JSON and data mixtures."""
import json

import numpy as np
import pytest

from instructsam_core.errors import UserError
from instructsam_core.masks import encode_mask
from instructsam_core.training.mixture import build_mixture, load_mixture_file, parse_mixture, repeat_records
from instructsam_core.training.records import RecordError, read_records
from instructsam_core.training.samples import SampleOptions, turn_samples

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
        {"image": "c.png", "height": H, "width": W, "type": "instseg", "annotation": [
            _ann("cat", [RLE_LIST]), _ann("dog", None),
        ]},
    ]
    records_read, report = read_records(_write(tmp_path, records), tmp_path)
    assert report.records == 3 and report.samples == 3 and not report.skipped
    first = records_read[0]
    assert first.image == tmp_path / "a.png" and not first.instseg
    assert first.phrases == ["red cup", "box thing", "unicorn"]  # the release's clean_phrase
    assert first.modality_length == 2  # annotations carrying instances
    masks = first.decode()
    assert [m.shape for m in masks] == [(2, H, W), (1, H, W), (0, H, W)]
    assert np.array_equal(masks[0][0], RLE_LIST_MASK)
    assert np.array_equal(masks[0][1], hand)
    box = np.zeros((H, W), bool)
    box[0:2, 1:3] = True  # x 1, w 2; y 0, h 2 (truncated, clipped to the image)
    assert np.array_equal(masks[1][0], box)

    sentence = records_read[1]
    assert sentence.phrases == ["cup"] and sentence.targets[0].text == "What can I drink from?"
    polygon = sentence.decode()[0][0]
    assert polygon[0, 0] and polygon[1, 2] and not polygon[:, 3].any()
    assert records_read[2].instseg and records_read[2].phrases == ["cat", "dog"]
    assert records_read[2].modality_length == 1

    # made once (data.samples: turns): one sample per turn, a record's turns in file order
    options = SampleOptions(samples="turns", style="benchmark")
    turns = turn_samples(first, 0, options)
    assert [[p.text for p in s.phrases] for s in turns] == [["red cup"], ["box thing"], ["unicorn"]]
    assert turns[0].turns[0].question == "red cup Please output the segmentation mask."
    assert turn_samples(sentence, 0, options)[0].turns[0].question == \
        "What can I drink from? Please output the segmentation mask."
    instseg = turn_samples(records_read[2], 0, options)
    assert len(instseg) == 1 and [p.text for p in instseg[0].phrases] == ["cat", "dog"]
    assert instseg[0].turns[0].question == "cat, dog Please output the segmentation mask."


def test_limits_skip_and_split(tmp_path):
    eleven = [RLE_LIST] * 11
    annotations = [_ann("crowd", eleven)] + [_ann(f"thing {i}", [RLE_LIST]) for i in range(12)]
    records, report = read_records(_write(tmp_path, [{"image": "a.png", "height": H, "width": W,
                                                      "annotation": annotations}]), tmp_path)
    assert report.skipped["annotations with more than 10 instances"] == 1
    assert len(records[0].targets) == 13  # kept: the release skips it when a sample is drawn
    samples = turn_samples(records[0], 0, SampleOptions(samples="turns"))
    names = [s.source for s in samples]
    assert names == ["train.json:0"] * 10 + ["train.json:0#1"] * 2
    assert [p.text for s in samples[10:] for p in s.phrases] == ["thing 10", "thing 11"]
    # only unusable annotations (points, crowds): the record is dropped
    _, report = read_records(_write(tmp_path, [{"image": "a.png", "height": H, "width": W, "annotation": [
        _ann("crowd", eleven), {"type": "phrase", "text": "tap", "ann_type": "point", "ann": ["[1, 1]"]}]}]), tmp_path)
    assert report.samples == 0 and report.skipped["records without a usable annotation"] == 1
    with pytest.raises(RecordError, match="a bbox annotation needs its boxes"):
        read_records(_write(tmp_path, [{"image": "a.png", "height": H, "width": W,
                                        "annotation": [_ann("box", None, ann_type="bbox")]}]), tmp_path)


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
    records, _ = read_records(_write(tmp_path, [record] * 40), tmp_path)

    def forms(fraction):
        options = SampleOptions(samples="turns", instseg_single_fraction=fraction)
        return [[len(s.phrases) for s in turn_samples(r, 0, options)] for r in records]

    assert forms(0.0) == [[3]] * 40  # one turn listing the three
    assert forms(1.0) == [[1, 1, 1]] * 40
    single = turn_samples(records[0], 0, SampleOptions(samples="turns", instseg_single_fraction=1.0))
    assert [s.phrases[0].text for s in single] == ["cat", "dog", "cow"]
    half = forms(0.5)
    assert [3] in half and [1, 1, 1] in half  # both forms occur ...
    assert half == forms(0.5)  # ... fixed per record
