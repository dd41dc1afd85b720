"""predictions.jsonl: durable per-query writes, crash recovery without duplicates, shard merge."""
from __future__ import annotations

import json

import numpy as np
import pytest

from instructsam_core.errors import UserError
from instructsam_core.evaluation.predictions import (
    PredictionsWriter,
    merge_prediction_files,
    read_predictions,
    shard_file_name,
)
from instructsam_core.masks import encode_mask


def rle(k: int) -> dict:
    mask = np.zeros((3, 4), dtype=bool)
    mask.flat[k] = True
    return encode_mask(mask)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writer_writes_instances_then_marker(tmp_path):
    path = tmp_path / "p.jsonl"
    with PredictionsWriter(path) as writer:
        writer.write_query(0, 0, [(0.9, rle(1)), (0.2, rle(2))])
        writer.write_query(0, 1, [])
    content = lines(path)
    assert content == [
        {"record": 0, "annotation": 0, "score": 0.9, "segmentation": rle(1)},
        {"record": 0, "annotation": 0, "score": 0.2, "segmentation": rle(2)},
        {"record": 0, "annotation": 0, "done": True, "num_instances": 2},
        {"record": 0, "annotation": 1, "done": True, "num_instances": 0},
    ]
    parsed = read_predictions(path)
    assert parsed.done == {(0, 0), (0, 1)} and len(parsed.instances) == 2 and parsed.has_markers


def test_reopening_a_clean_file_keeps_it_byte_identical(tmp_path):
    path = tmp_path / "p.jsonl"
    with PredictionsWriter(path) as writer:
        writer.write_query(3, 0, [(0.5, rle(0))])
    before = path.read_bytes()
    with PredictionsWriter(path) as writer:
        assert writer.done == {(3, 0)}
    assert path.read_bytes() == before


def test_truncated_tail_and_unfinished_query_are_dropped(tmp_path):
    path = tmp_path / "p.jsonl"
    with PredictionsWriter(path) as writer:
        writer.write_query(0, 0, [(0.9, rle(1))])
        writer.write_query(1, 0, [])
    # A crash mid-query: instance lines of (2, 0) without its marker, then half a line.
    with open(path, "a") as handle:
        handle.write(json.dumps({"record": 2, "annotation": 0, "score": 0.7, "segmentation": rle(3)}) + "\n")
        handle.write('{"record": 2, "annotation": 0, "sco')
    with pytest.raises(UserError, match="line 5"):
        read_predictions(path)  # strict reading (scoring mode) names the bad line
    with PredictionsWriter(path) as writer:
        assert writer.done == {(0, 0), (1, 0)}
        writer.write_query(2, 0, [(0.7, rle(3))])
    content = lines(path)
    assert len(content) == 5
    keys = [(c["record"], c["annotation"], c.get("done", False)) for c in content]
    assert keys == [(0, 0, False), (0, 0, True), (1, 0, True), (2, 0, False), (2, 0, True)]


def test_merge_sorts_queries_and_refuses_overlaps(tmp_path):
    a, b = tmp_path / shard_file_name(0, 2), tmp_path / shard_file_name(1, 2)
    assert a.name == "predictions.shard000-of-002.jsonl"
    with PredictionsWriter(a) as writer:
        writer.write_query(0, 0, [(0.9, rle(1))])
        writer.write_query(1, 1, [])
    with PredictionsWriter(b) as writer:
        writer.write_query(1, 0, [(0.4, rle(2))])
    merged = merge_prediction_files([a, b], tmp_path / "predictions.jsonl")
    assert merged.done == {(0, 0), (1, 0), (1, 1)}
    order = [(c["record"], c["annotation"]) for c in lines(tmp_path / "predictions.jsonl") if c.get("done")]
    assert order == [(0, 0), (1, 0), (1, 1)]
    with pytest.raises(UserError, match="also appear"):
        merge_prediction_files([a, a], tmp_path / "x.jsonl")


@pytest.mark.parametrize(
    "line, pattern",
    [
        ('{"record": -1, "annotation": 0, "score": 1, "segmentation": {"size": [1, 1], "counts": "1"}}', "record"),
        ('{"record": 0, "annotation": 0, "score": "high", "segmentation": {"size": [1, 1], "counts": "1"}}', "score"),
        ('{"record": 0, "annotation": 0, "score": 0.5}', "segmentation"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_bad_lines_are_user_errors(tmp_path, line, pattern):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UserError, match=pattern):
        read_predictions(path)
