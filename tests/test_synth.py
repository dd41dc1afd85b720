"""Synthetic data set: deterministic, in the released formats, and its instructions are true."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instructsam_core.cli import main as cli_main
from instructsam_core.masks import decode_annotation, decode_mask
from instructsam_core.synth import COLORS, generate, vocabulary

N = 24


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert cli_main(["synth", "--out", str(out), "--n", str(N), "--seed", "5", "--quiet"]) == 0
    return out


def test_same_seed_gives_byte_identical_files(synth_dir, tmp_path):
    generate(tmp_path, N, seed=5, split="train", progress=False)
    assert _digest(tmp_path) == _digest(synth_dir)


def test_other_seed_and_split_give_other_data(synth_dir, tmp_path):
    generate(tmp_path / "val", N, seed=5, split="val", progress=False)
    generate(tmp_path / "seed6", N, seed=6, split="train", progress=False)
    ours = json.loads((synth_dir / "inst2seg.json").read_text())
    val = json.loads((tmp_path / "val" / "inst2seg.json").read_text())
    other = json.loads((tmp_path / "seed6" / "inst2seg.json").read_text())
    assert {r["image"] for r in ours}.isdisjoint({r["image"] for r in val})  # held-out names
    assert [r["annotation"] for r in ours] != [r["annotation"] for r in val]
    assert [r["annotation"] for r in ours] != [r["annotation"] for r in other]


def test_training_records_follow_the_released_format(synth_dir):
    records = json.loads((synth_dir / "train.json").read_text())
    assert {r["type"] for r in records} == {"instseg", "referring"}
    kinds = set()
    saw_multi = saw_none = False
    for record in records:
        assert set(record) == {"image", "height", "width", "type", "annotation"}
        with Image.open(synth_dir / record["image"]) as image:
            assert image.size == (record["width"], record["height"]) and image.mode == "RGB"
        assert 1 <= len(record["annotation"]) <= 10
        for ann in record["annotation"]:
            assert set(ann) == {"type", "text", "category", "ann_type", "answer", "ann"}
            assert ann["ann_type"] == "mask" and ann["type"] in ("phrase", "sentence")
            kinds.add(ann["type"])
            for phrase in (ann["text"], ann["category"], ann["answer"]):
                assert phrase == phrase.strip() and not phrase.endswith(".") and phrase[0] == phrase[0].lower()
            assert ann["answer"] == (ann["text"] if ann["type"] == "phrase" else ann["category"])
            if ann["ann"] is None:
                saw_none = True
                continue
            assert all(isinstance(a, str) for a in ann["ann"])  # one JSON string per instance
            masks = decode_annotation(ann["ann"], "mask", record["height"], record["width"])
            assert all(m.any() for m in masks)
            saw_multi |= len(masks) >= 2
            total = np.sum(masks, axis=0)
            assert total.max() == 1  # instances never overlap
    assert kinds == {"phrase", "sentence"} and saw_multi and saw_none


def _objects_by_mask(scene: dict, masks: list[np.ndarray]) -> list[dict]:
    """Match each instance mask to the scene object with the same tight box."""
    found = []
    for mask in masks:
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        box = [int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)]
        matches = [o for o in scene["objects"] if o["box"] == box]
        assert len(matches) == 1
        found.append(matches[0])
    return found


def test_benchmark_instructions_mean_what_they_say(synth_dir):
    bench = json.loads((synth_dir / "inst2seg.json").read_text())
    scenes = {s["image"]: s for s in json.loads((synth_dir / "scenes.json").read_text())}
    assert len(bench) == N
    checked = {"category": 0, "extreme": 0, "no_target": 0}
    sizes = set()
    for record in bench:
        scene = scenes[record["image"]]
        sizes.add((record["height"], record["width"]))
        assert set(record) == {"image", "height", "width", "annotation"}
        with Image.open(synth_dir / record["image"]) as image:
            pixels = np.asarray(image.convert("RGB")).astype(int)
        for ann in record["annotation"]:
            text = ann["text"]
            if "mask" not in ann:
                checked["no_target"] += 1
                match = re.fullmatch(r"(red|green|blue|yellow) (circle|square|triangle|ring)s", text)
                if match:
                    assert not any(o["color"] == match[1] and o["shape"] == match[2] for o in scene["objects"])
                continue
            masks = [decode_mask(m, record["height"], record["width"]) for m in ann["mask"]]
            objects = _objects_by_mask(scene, masks)
            match = re.fullmatch(r"(red|green|blue|yellow) (circle|square|triangle|ring)s", text)
            if match:
                checked["category"] += 1
                expected = [o for o in scene["objects"] if o["color"] == match[1] and o["shape"] == match[2]]
                assert sorted(map(str, objects)) == sorted(map(str, expected))
                for mask in masks:  # the pixels really are painted in that colour (+-12 jitter)
                    mean = pixels[mask].mean(axis=0)
                    assert np.abs(mean - np.array(COLORS[match[1]])).max() <= 13
            match = re.fullmatch(r"the (leftmost|rightmost) (circle|square|triangle|ring)", text)
            if match:
                checked["extreme"] += 1
                same = [o for o in scene["objects"] if o["shape"] == match[2]]
                centre = lambda o: (o["box"][0] + o["box"][2]) / 2  # noqa: E731
                pick = min if match[1] == "leftmost" else max
                assert len(objects) == 1 and objects[0] is pick(same, key=centre)
    assert checked["category"] > 0 and checked["no_target"] > 0
    assert len(sizes) > 1 and any(h != w for h, w in sizes)
    assert all(160 <= h <= 320 and 160 <= w <= 320 for h, w in sizes)


def test_near_misses_add_absent_phrases_one_attribute_away_and_leave_the_benchmark_alone(synth_dir, tmp_path):
    out = tmp_path / "nm"
    assert cli_main(["synth", "--out", str(out), "--n", str(N), "--seed", "5", "--near-misses", "2", "--quiet"]) == 0
    assert (out / "inst2seg.json").read_bytes() == (synth_dir / "inst2seg.json").read_bytes()
    plain = json.loads((synth_dir / "train.json").read_text())
    harder = json.loads((out / "train.json").read_text())
    scenes = json.loads((synth_dir / "scenes.json").read_text())
    by_image = {s["image"]: s for s in scenes}
    added_total = 0
    for before, after in zip(plain, harder):
        assert before["image"] == after["image"] and len(after["annotation"]) <= 10
        assert after["annotation"][: len(before["annotation"])] == before["annotation"]
        added = after["annotation"][len(before["annotation"]):]
        if before["type"] != "instseg":
            assert not added
        assert len(added) <= 2
        added_total += len(added)
        objects = by_image[after["image"]]["objects"]
        for ann in added:
            assert ann["ann"] is None and ann["text"] not in [a["text"] for a in before["annotation"]]
            words = ann["text"].split()
            if len(words) == 1:  # a shape nobody in the image has
                assert words[0][:-1] not in {o["shape"] for o in objects}
            else:  # colour + shape: absent, but one of the two is in the image
                color, shape = words[0], words[1][:-1]
                assert (color, shape) not in {(o["color"], o["shape"]) for o in objects}
                assert color in {o["color"] for o in objects} or shape in {o["shape"] for o in objects}
    assert added_total >= N  # most records get their two
    assert cli_main(["synth", "--out", str(tmp_path / "bad"), "--near-misses", "4"]) == 2


def test_vocabulary_covers_every_generated_text(synth_dir):
    words = set(vocabulary())
    texts = [a["text"] for r in json.loads((synth_dir / "inst2seg.json").read_text()) for a in r["annotation"]]
    texts += [a[k] for r in json.loads((synth_dir / "train.json").read_text()) for a in r["annotation"] for k in ("text", "category")]
    for text in texts:
        for word in text.replace("?", " ? ").split():
            assert word in words, (word, text)


def test_bad_arguments_are_user_errors(tmp_path, capsys):
    assert cli_main(["synth", "--out", str(tmp_path), "--n", "0"]) == 2
    assert "--n must be positive" in capsys.readouterr().err
