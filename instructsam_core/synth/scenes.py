"""The pictures: coloured shapes (4 colours x 4 shapes) drawn without overlap on a plain or noisy
background, each object's mask exactly the pixels painted with its colour."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 215),
    "yellow": (235, 200, 35),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring")
PLURAL = {shape: shape + "s" for shape in SHAPES}


@dataclass
class SceneObject:
    """One painted shape; `mask` is exactly the pixels painted with its colour."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float  # half-extent in pixels
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def box(self) -> tuple[int, int, int, int]:
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        return int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)


@dataclass
class Scene:
    height: int
    width: int
    image: np.ndarray  # uint8 [H, W, 3]
    objects: list[SceneObject]


def _shape_mask(shape: str, cx: float, cy: float, s: float, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs += 0.5
    ys += 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= s * s
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= s * s) & (d2 >= (0.5 * s) ** 2)
    if shape == "square":
        half = 0.85 * s
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # Upright triangle: apex at (cx, cy - s), base at y = cy + 0.8 s, base half-width s.
        top, bottom = -s, 0.8 * s
        t = (dy - top) / (bottom - top)  # 0 at the apex, 1 at the base
        return (dy <= bottom) & (t >= 0) & (np.abs(dx) <= t * s)
    raise ValueError(f"unknown shape {shape}")


def make_scene(rng: np.random.Generator) -> Scene:
    """Draw one image: 1-5 non-overlapping shapes on a plain or noisy background."""
    height = int(rng.integers(160, 321))
    width = int(rng.integers(160, 321))
    short = min(height, width)
    if rng.random() < 0.5:
        base = rng.integers(200, 251, size=3)
        image = np.broadcast_to(base, (height, width, 3)).astype(np.float64)
    else:
        base = rng.integers(170, 231, size=3)
        image = base + rng.normal(0.0, 10.0, size=(height, width, 3))
    count = int(rng.choice([1, 2, 3, 4, 5], p=[0.12, 0.22, 0.26, 0.22, 0.18]))
    objects: list[SceneObject] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        for _attempt in range(40):
            s = float(rng.uniform(0.085, 0.17) * short)
            cx = float(rng.uniform(s + 2, width - s - 2))
            cy = float(rng.uniform(s + 2, height - s - 2))
            if all((cx - x) ** 2 + (cy - y) ** 2 >= (1.2 * (s + r) + 3) ** 2 for x, y, r in placed):
                break
        else:
            continue  # no room left: the scene keeps fewer objects
        mask = _shape_mask(shape, cx, cy, s, height, width)
        if mask.sum() < 40:
            continue
        placed.append((cx, cy, s))
        objects.append(SceneObject(shape, color, cx, cy, s, mask))
        jitter = rng.integers(-12, 13)
        image[mask] = np.clip(np.array(COLORS[color], dtype=np.float64) + jitter, 0, 255)
    return Scene(height, width, np.clip(np.rint(image), 0, 255).astype(np.uint8), objects)
