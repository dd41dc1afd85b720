"""scripts/shape_diagnostics.py: the measurement behind BENCHMARKS.md's shape diagnostics."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from instructsam_core import synth
from instructsam_core.predictor import Predictor

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "shape_diagnostics.py"


@pytest.fixture(scope="module")
def diagnostics():
    spec = importlib.util.spec_from_file_location("shape_diagnostics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_box_mean_averages_the_cells_under_a_box(diagnostics):
    grid = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    # Image 100x200 (h x w) on a 4x4 grid: x 50..150 -> columns 1..2, y 0..50 -> rows 0..1.
    assert diagnostics.box_mean(grid, [50, 0, 150, 50], 100, 200) == pytest.approx((1 + 2 + 5 + 6) / 4)
    # A box smaller than a cell still reads the cell it starts in.
    assert diagnostics.box_mean(grid, [0, 80, 10, 85], 100, 200) == pytest.approx(12.0)


def test_a_directory_without_synth_scenes_is_a_clear_error(diagnostics, tmp_path):
    with pytest.raises(SystemExit, match="scenes.json not found"):
        diagnostics.read_scenes(tmp_path, 5)
    (tmp_path / "scenes.json").write_text(json.dumps([{"image": "a.png", "objects": [{"shape": "star"}]}]))
    with pytest.raises(SystemExit, match="scene 0 is not an `instructsam synth` scene"):
        diagnostics.read_scenes(tmp_path, 5)


def test_the_default_model_tells_colours_apart_on_unseen_scenes(diagnostics, tmp_path):
    synth.generate(tmp_path, 12, seed=5, split="test")
    predictor = Predictor.from_pretrained("default", device="cpu")
    scenes = diagnostics.read_scenes(tmp_path, 12)
    result = diagnostics.semantic_discrimination(predictor, tmp_path, scenes)
    assert "scores" not in vars(predictor)  # the capture hook is removed again
    assert len(result["colour"]) >= 5 and len(result["shape"]) >= 5
    # Colour is what the semantic map has learnt (BENCHMARKS.md: 0.50 on the held-out split);
    # an untrained or mis-loaded model is near 0.
    assert sum(result["colour"]) / len(result["colour"]) >= 0.3
