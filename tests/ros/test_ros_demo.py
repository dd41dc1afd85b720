"""instructsam-demo end to end (node, camera and demo processes over DDS), and its model choice."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2

from instructsam_core.model_paths import DEFAULT_MODEL_DIR
from instructsam_ros.demo.run import pick_model

REPO = Path(__file__).resolve().parents[2]


def run_demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "instructsam_ros.demo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_demo_streams_two_cameras_with_their_own_instructions(tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    result = run_demo("--model", str(tiny_model_dir), "--device", "cpu", "--seconds", "2", "--rate", "4",
                      "--size", "160x120", "--out", str(out), "--namespace", "/demo_test",
                      "--instruction", "red circles", "--instruction", "blue squares")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo: front follows the node's instruction: 'red circles'" in result.stdout
    assert "demo: wrist has its own instruction (parameter wrist.instruction; a new one on wrist/instruction replaces it): 'blue squares'" in result.stdout
    assert "on each of 2 cameras" in result.stdout
    # The depth camera: known distances announced, every instance printed with its 3-D position
    # (the tiny model's masks fall on shapes and wall, so between the nearest shape and the wall).
    assert "demo: depth camera (60 degrees wide): red square at 0.60 m, blue triangle at 0.90 m" in result.stdout
    depths = [float(z) for z in re.findall(r" at \([-+]\d+\.\d\d, [-+]\d+\.\d\d, (\d+\.\d\d)\) m", result.stdout)]
    assert depths and all(0.6 <= z <= 2.0 for z in depths)
    # Each camera's results answer its own instruction, never the other's.
    frames = re.findall(r"^frame \d+ (\w+) \['(.*)' -> phrases .*\] (\d+) instances", result.stdout, re.M)
    assert {(camera, text) for camera, text, _ in frames} == {("front", "red circles"), ("wrist", "blue squares")}
    for camera in ("front", "wrist"):
        pngs = sorted(out.glob(f"overlay_{camera}_*.png"))
        assert pngs
        image = cv2.imread(str(pngs[0]))
        assert image is not None and image.shape == (120, 160, 3)
    assert f"{len(list(out.glob('overlay_*.png')))} overlay PNGs" in result.stdout
    # At the end, per camera and instruction: how many of its frames found something, as the frame lines say.
    summary = re.findall(r"^demo: (\w+) '(.*)': (\d+) of (\d+) frames found something$", result.stdout, re.M)
    assert [(camera, text) for camera, text, _, _ in summary] == [("front", "red circles"), ("wrist", "blue squares")]
    for camera, text, hits, total in summary:
        assert int(total) == sum((c, t) == (camera, text) for c, t, _ in frames) > 0
        assert int(hits) == sum((c, t) == (camera, text) and int(n) > 0 for c, t, n in frames)


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
