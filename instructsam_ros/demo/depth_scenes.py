"""Synthetic RGB-D frames of known geometry, for the demo, the tests and the benchmark.

A scene is a set of flat coloured rectangles ("plates") in front of a wall, seen by a pinhole
camera: every pixel's ray is intersected with every plate (vectorised over the image), the
nearest hit wins, so colour, depth and each plate's visible mask agree exactly. Plates can be
turned about the vertical axis, which gives them a depth extent. The true centre and
axis-aligned size of each plate are known in closed form (`Plate.box`), which is what the
node's 3-D estimates are checked against.

Coordinates follow the ROS optical frame: x right, y down, z forward, metres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from instructsam_ros.depth.geometry import Intrinsics


@dataclass(frozen=True)
class Plate:
    """A flat rectangle: centre (metres), width x height (metres), colour (rgb8), and `yaw`
    (radians) turning it about the vertical axis through its centre (its right edge moves
    away from the camera for a positive yaw)."""

    center: tuple[float, float, float]
    size: tuple[float, float]
    color: tuple[int, int, int]
    yaw: float = 0.0

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(its width direction, its height direction, its normal) as unit vectors."""
        along = np.array([math.cos(self.yaw), 0.0, math.sin(self.yaw)])
        down = np.array([0.0, 1.0, 0.0])
        return along, down, np.cross(along, down)

    def box(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(centre, size) of the axis-aligned box around the rectangle."""
        width, height = self.size
        size = (width * abs(math.cos(self.yaw)), height, width * abs(math.sin(self.yaw)))
        return tuple(float(c) for c in self.center), tuple(float(s) for s in size)


@dataclass
class RgbdFrame:
    rgb: np.ndarray  # HxWx3 uint8
    depth: np.ndarray  # HxW float32 metres (the wall where no plate is)
    masks: list[np.ndarray]  # per plate, the pixels where it is visible
    plates: list[Plate]
    intrinsics: Intrinsics


def pinhole(width: int, height: int, horizontal_fov_deg: float) -> Intrinsics:
    """A centred pinhole camera (square pixels) with the given horizontal field of view."""
    fx = (width / 2.0) / math.tan(math.radians(horizontal_fov_deg) / 2.0)
    return Intrinsics(fx, fx, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


def render(plates: list[Plate], intrinsics: Intrinsics, wall_depth: float = 2.5,
           wall_color: tuple[int, int, int] = (225, 225, 225)) -> RgbdFrame:
    """Colour, depth and visible masks of the plates in front of a wall at `wall_depth`."""
    k = intrinsics
    x_n = ((np.arange(k.width, dtype=np.float64) - k.cx) / k.fx)[None, :]
    y_n = ((np.arange(k.height, dtype=np.float64) - k.cy) / k.fy)[:, None]
    depth = np.full((k.height, k.width), wall_depth, np.float64)
    owner = np.full((k.height, k.width), -1, np.int32)
    for index, plate in enumerate(plates):
        along, down, normal = plate.axes
        center = np.asarray(plate.center, dtype=np.float64)
        # Ray (x_n, y_n, 1) * t meets the plate's plane where normal . (ray t - center) = 0.
        facing = normal[0] * x_n + normal[1] * y_n + normal[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = float(normal @ center) / facing
        offset_x, offset_y, offset_z = x_n * t - center[0], y_n * t - center[1], t - center[2]
        s = along[0] * offset_x + along[1] * offset_y + along[2] * offset_z
        r = down[0] * offset_x + down[1] * offset_y + down[2] * offset_z
        hit = (t > 0) & (np.abs(s) <= plate.size[0] / 2) & (np.abs(r) <= plate.size[1] / 2) & (t < depth)
        depth[hit] = t[hit]
        owner[hit] = index
    rgb = np.empty((k.height, k.width, 3), np.uint8)
    rgb[:] = wall_color
    masks = []
    for index, plate in enumerate(plates):
        mask = owner == index
        rgb[mask] = plate.color
        masks.append(mask)
    return RgbdFrame(rgb, depth.astype(np.float32), masks, list(plates), intrinsics)


def to_16uc1(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> 16UC1 millimetres (0 where the reading is invalid or out of range)."""
    millimetres = np.where(np.isfinite(depth_m) & (depth_m > 0), np.rint(depth_m * 1000.0), 0.0)
    return np.clip(millimetres, 0, 65535).astype(np.uint16)


def with_holes(depth: np.ndarray, fraction: float, seed: int, invalid: float = 0.0) -> np.ndarray:
    """A copy with `fraction` of the pixels set to `invalid` (0, NaN, inf), chosen at random."""
    out = depth.copy()
    holes = np.random.default_rng(seed).random(depth.shape) < fraction
    out[holes] = invalid
    return out


def tabletop_scene(width: int = 640, height: int = 480) -> list[Plate]:
    """The tests' scene: three plates at 0.55-0.80 m (one turned by 35 degrees) before a wall
    at 1.5 m; distinct saturated colours the embedded default model segments as 'squares'."""
    return [
        Plate(center=(-0.10, -0.04, 0.60), size=(0.10, 0.10), color=(220, 40, 40)),
        Plate(center=(0.09, 0.05, 0.70), size=(0.12, 0.12), color=(40, 80, 220)),
        Plate(center=(0.02, -0.09, 0.80), size=(0.11, 0.11), color=(230, 200, 40), yaw=math.radians(35.0)),
    ]


def scene_depth(objects, width: int, height: int, wall_depth: float = 2.0, near: float = 0.6,
                step: float = 0.3) -> tuple[np.ndarray, list[float]]:
    """Depth (float32 metres, width x height) of a `synth.Scene`'s objects as flat cut-outs
    facing the camera: the k-th object at `near + k * step` metres, the rest a wall at
    `wall_depth`. Object masks are resized like the demo's colour frame (nearest neighbour), so
    colour and depth line up pixel for pixel. Returns (depth, each object's distance)."""
    import cv2

    depth = np.full((height, width), wall_depth, np.float32)
    distances = []
    for index, obj in enumerate(objects):
        distance = round(near + index * step, 3)
        mask = cv2.resize(obj.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        depth[mask] = distance
        distances.append(distance)
    return depth, distances


BENCHMARK_COLORS = ((220, 40, 40), (40, 80, 220), (230, 200, 40), (40, 160, 60), (230, 120, 30))


def benchmark_scene() -> list[Plate]:
    """Ten 11 cm squares in two rows at 0.80-1.25 m before a wall (the ROS benchmark's depth
    scene: with a 60 degree camera each covers ~3-4 thousand pixels of a 640x480 frame)."""
    plates = []
    for index in range(10):
        row, column = divmod(index, 5)
        plates.append(Plate(center=((column - 2) * 0.17, (row - 0.5) * 0.24, 0.80 + 0.05 * index), size=(0.11, 0.11),
                            color=BENCHMARK_COLORS[index % len(BENCHMARK_COLORS)]))
    return plates
