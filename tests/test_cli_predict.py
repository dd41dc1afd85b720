"""`instructsam tiny` + `instructsam predict` end to end, and their one-line errors."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from instructsam_core.cli import main


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "shapes.png"
    image = np.full((150, 220, 3), 255, np.uint8)
    cv2.circle(image, (60, 70), 30, (0, 0, 255), -1)
    cv2.imwrite(str(path), image)
    return path


def test_tiny_then_predict_writes_instances_and_overlay(tmp_path, picture, capsys):
    model = tmp_path / "model"
    assert main(["tiny", "--out", str(model)]) == 0
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model), "--image", str(picture), "--instruction", "red circles",
                 "--out", str(out), "--threshold", "0.0"])
    assert code == 0
    records = json.loads((out / "instances.json").read_text())
    assert len(records) == 10  # threshold 0 keeps every query of the one phrase
    for record in records:
        assert record["phrase"] == "red circles"
        assert 0.0 <= record["score"] <= 1.0
        mask = mask_utils.decode({"size": record["segmentation"]["size"],
                                  "counts": record["segmentation"]["counts"].encode()})
        assert mask.shape == (150, 220)
        assert record["area"] == int(mask.sum())
        x, y, w, h = record["bbox"]
        if record["area"]:
            ys, xs = np.nonzero(mask)
            assert [x, y, w, h] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    overlay = cv2.imread(str(out / "overlay.png"))
    assert overlay.shape == (150, 220, 3)
    assert "red circles" in capsys.readouterr().out


def test_inference_layout_option_overrides_the_models_own(tmp_path, picture, tiny_model_dir, capsys):
    scores = {}
    for layout in (None, "release", "trained"):
        out = tmp_path / str(layout)
        extra = [] if layout is None else ["--inference-layout", layout]
        assert main(["predict", "--model", str(tiny_model_dir), "--image", str(picture), "--instruction", "red circles",
                     "--out", str(out), "--threshold", "0.0", *extra]) == 0
        assert f"inference layout: {layout or 'trained'}" in capsys.readouterr().out  # written here: trained
        scores[layout] = [r["score"] for r in json.loads((out / "instances.json").read_text())]
    assert scores[None] == scores["trained"] != scores["release"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--model": "/nonexistent/model"}, "does not exist"),
        ({"--image": "/nonexistent.png"}, "does not exist"),
        ({"--instruction": "   "}, "instruction is empty"),
        ({"--instruction": "x" * 5000}, "limit is"),
        ({"--threshold": "1.5"}, "threshold"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, picture, tiny_model_dir, capsys, change, message):
    args = {"--model": str(tiny_model_dir), "--image": str(picture), "--instruction": "red circles",
            "--out": str(tmp_path / "o")}
    args.update(change)
    code = main(["predict", *[item for pair in args.items() for item in pair]])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_corrupt_image_and_non_model_directory_are_one_line_errors(tmp_path, tiny_model_dir, picture, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code = main(["predict", "--model", str(tiny_model_dir), "--image", str(broken), "--instruction", "a",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "cannot read image" in capsys.readouterr().err
    not_model = tmp_path / "empty"
    not_model.mkdir()
    (not_model / "config.json").write_text("{}")
    code = main(["predict", "--model", str(not_model), "--image", str(picture), "--instruction", "a",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no *.safetensors" in err


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_image_that_is_a_directory_is_named_as_one(tmp_path, tiny_model_dir, capsys):
    code = main(["predict", "--model", str(tiny_model_dir), "--image", str(tmp_path), "--instruction", "a",
                 "--out", str(tmp_path / "o")])
    err = _one_line_error(capsys, code)
    assert "is a directory, not an image file" in err and "does not exist" not in err


def test_tiny_out_that_is_a_file_or_cannot_be_created(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    err = _one_line_error(capsys, main(["tiny", "--out", str(a_file)]))
    assert "is a file, not a directory" in err
    # a directory under a regular file cannot be created (whoever runs the test, root included)
    err = _one_line_error(capsys, main(["tiny", "--out", str(a_file / "model")]))
    assert "cannot create --out" in err and str(a_file / "model") in err
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    err = _one_line_error(capsys, main(["tiny", "--out", str(full)]))
    assert "is not empty" in err and "--force" in err
    assert (full / "keep.txt").read_text() == "x"
