"""The demo's synthetic scenes: the coloured shapes of `instructsam_core.synth` at a camera's frame
size, the instructions that fit them, and what the depth camera shows (each shape at a known
distance; the depth images themselves come from depth_scenes.py). The benchmark and the tests
publish the same scenes."""
from __future__ import annotations

import numpy as np

DEMO_FOV_DEG = 60.0  # horizontal field of view of the synthetic cameras


def demo_scene(seed: int):
    """The synth scene (`synth.Scene`, its native size) the demo's camera shows for `seed`: the
    first of the seed's scenes with at least three objects."""
    from instructsam_core import synth

    rng = np.random.default_rng(seed)
    for _ in range(100):
        scene = synth.make_scene(rng)
        if len(scene.objects) >= 3:
            break
    return scene


def synthetic_scene(seed: int, height: int, width: int) -> tuple[np.ndarray, list[str], list[str]]:
    """The demo scene scaled to the frame size (nearest neighbour), with the names that fit it.

    Returns (frame, shape names present, colour names present).
    """
    import cv2

    scene = demo_scene(seed)
    frame = cv2.resize(scene.image, (width, height), interpolation=cv2.INTER_NEAREST)
    shapes = sorted({o.shape for o in scene.objects})
    colors = sorted({o.color for o in scene.objects})
    return frame, shapes, colors


def default_instructions(shapes: list[str], colors: list[str]) -> list[str]:
    """A category phrase (single-forward path) for the first camera and a reasoning question
    (generation path) for the second, the question in the Inst2Seg wording the embedded default
    model was trained on: without the suffix it named the wrong shape for some questions
    ("warning sign" -> rings)."""
    from instructsam_core import synth

    return [synth.PLURAL[shapes[0]], synth.SHAPE_REASONS[shapes[-1]][0] + synth.INST2SEG_PROMPT_SUFFIX]


def depth_line(seed: int) -> str:
    """What the depth camera shows: each shape's known distance."""
    from instructsam_ros.demo.depth_scenes import scene_depth

    scene = demo_scene(seed)
    _, distances = scene_depth(scene.objects, scene.width, scene.height)
    shapes = ", ".join(f"{o.color} {o.shape} at {d:.2f} m" for o, d in zip(scene.objects, distances))
    return f"demo: depth camera ({DEMO_FOV_DEG:g} degrees wide): {shapes}, a wall at 2.00 m"
