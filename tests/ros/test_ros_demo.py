"""instructsam-demo end to end (node, camera and demo processes over DDS), and its model choice."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2

from instructsam_core.model_paths import DEFAULT_MODEL_DIR
from instructsam_ros.demo import pick_model

REPO = Path(__file__).resolve().parents[2]


def run_demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "instructsam_ros.demo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_demo_streams_prints_instances_and_writes_overlays(tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    result = run_demo("--model", str(tiny_model_dir), "--device", "cpu", "--seconds", "2", "--rate", "4",
                      "--size", "160x120", "--out", str(out), "--namespace", "/demo_test",
                      "--instruction", "red circles", "--instruction", "blue squares")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "frame 0001 ['red circles' -> phrases ['red circles']]" in result.stdout
    assert "new instruction 'blue squares'" in result.stdout
    assert "camera: published" in result.stdout
    pngs = sorted(out.glob("overlay_*.png"))
    assert pngs and f"{len(pngs)} overlay PNGs" in result.stdout
    image = cv2.imread(str(pngs[0]))
    assert image is not None and image.shape == (120, 160, 3)
    # At the end, per instruction: how many of its frames found something, as the frame lines say.
    frames = re.findall(r"^frame \d+ \['(.*)' -> phrases .*\] (\d+) instances", result.stdout, re.M)
    summary = re.findall(r"^demo: '(.*)': (\d+) of (\d+) frames found something$", result.stdout, re.M)
    assert [text for text, _, _ in summary] == ["red circles", "blue squares"]
    for text, hits, total in summary:
        assert int(total) == sum(t == text for t, _ in frames)
        assert int(hits) == sum(t == text and int(n) > 0 for t, n in frames)
    assert int(summary[0][2]) > 0


def test_demo_refuses_a_missing_model_in_one_line(tmp_path):
    result = run_demo("--model", str(tmp_path / "nope"), "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("instructsam-demo: error:") and "does not exist" in lines[0]


def test_demo_falls_back_to_a_tiny_model_only_without_the_default_one(tmp_path):
    model, line = pick_model("default", tmp_path)
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        assert model == "default" and "embedded default model" in line
    else:
        assert Path(model, "config.json").is_file() and Path(model).parent == tmp_path
        assert "not installed yet" in line and "RANDOM" in line
