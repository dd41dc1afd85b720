"""Renders docs/instance_markers.png: what `overlay` and `instance_markers` show for one RGB-D frame.

  python scripts/render_markers_figure.py [--out docs/instance_markers.png]

Headless (matplotlib's Agg), from the synthetic tabletop scene of the tests (three squares at
0.60-0.80 m, one turned by 35 degrees, before a wall at 1.5 m; 640x480, 40 degree field of view)
with its exact masks standing in for the model's: the node's own code locates the instances
(depth/geometry), draws the overlay (messages/overlay) and lays out the markers
(messages/marker_layout); matplotlib then draws the markers and the instance points in 3-D, as
RViz's or Foxglove's 3-D view would (it is not a screenshot of either).
"""
from __future__ import annotations

import argparse
from itertools import product
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from instructsam_core.instances import Instance, mask_to_box  # noqa: E402
from instructsam_ros.demo.depth_scenes import pinhole, render, tabletop_scene  # noqa: E402
from instructsam_ros.depth.geometry import OK, DepthSettings, locate_instances  # noqa: E402
from instructsam_ros.messages.marker_layout import BOX, LocatedInstance, MarkerSet  # noqa: E402
from instructsam_ros.messages.mask_layout import label_image, tight_box  # noqa: E402
from instructsam_ros.messages.overlay import draw_overlay  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IDS = (3, 4, 5)  # instance ids as the node would number them
PHRASE = "squares"


def view(xyz: np.ndarray) -> np.ndarray:
    """Optical frame (x right, y down, z forward) -> plot axes (x right, z forward, up)."""
    return np.stack([xyz[..., 0], xyz[..., 2], -xyz[..., 1]], axis=-1)


def draw_box(ax, center, size, rgba) -> None:
    corners = np.array([[center[i] + sign * size[i] / 2 for i, sign in enumerate(signs)]
                        for signs in product((-1, 1), repeat=3)])
    for a, b in ((0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3), (2, 6), (3, 7), (4, 5), (4, 6), (5, 7), (6, 7)):
        segment = view(corners[[a, b]])
        ax.plot(segment[:, 0], segment[:, 1], segment[:, 2], color=rgba[:3], linewidth=1.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "instance_markers.png")
    args = parser.parse_args()

    k = pinhole(640, 480, 40.0)
    frame = render(tabletop_scene(), k, wall_depth=1.5)
    boxes = [tight_box(mask) for mask in frame.masks]
    locations = locate_instances(frame.depth, 1.0, k, (640, 480), frame.masks, boxes, DepthSettings(), keep_points=True)
    instances = [Instance(PHRASE, 0.9, mask, mask_to_box(mask)) for mask in frame.masks]
    labels = label_image(instances, IDS, 480, 640, boxes)
    overlay = draw_overlay(frame.rgb, labels, instances, IDS, boxes, distances=[loc.distance for loc in locations])
    located = [LocatedInstance(i, PHRASE, loc.box_center, loc.box_size, loc.distance)
               for i, loc in zip(IDS, locations) if loc.status == OK]
    specs = MarkerSet().update(located)

    figure = plt.figure(figsize=(12, 4.6), dpi=100)
    left = figure.add_subplot(1, 2, 1)
    left.imshow(overlay)
    left.set_title("overlay (rgb8): masks, boxes, 'id phrase score distance'", fontsize=10)
    left.axis("off")
    ax = figure.add_subplot(1, 2, 2, projection="3d")
    for instance_id, location in zip(IDS, locations):
        points = view(location.points[::7])
        colour = next(s.rgba for s in specs if s.id == instance_id and s.kind == BOX)
        ax.scatter(points[:, 0], points[:, 1], points[:, 2], s=0.4, color=colour[:3], alpha=0.35)
    for spec in specs:
        if spec.kind == BOX:
            draw_box(ax, spec.position, spec.scale, spec.rgba)
        else:
            x, y, z = view(np.array(spec.position))
            ax.text(x, y, z, spec.text, color=spec.rgba[:3], fontsize=8, ha="center")
    ax.scatter([0], [0], [0], marker="^", color="black", s=30)
    ax.text(0, 0, -0.03, "camera", fontsize=8, ha="center")
    ax.set_xlabel("x (m, right)", fontsize=8)
    ax.set_ylabel("z (m, forward)", fontsize=8)
    ax.set_zlabel("-y (m, up)", fontsize=8)
    ax.set_xlim(-0.25, 0.25)
    ax.set_ylim(0.0, 0.9)
    ax.set_zlim(-0.2, 0.2)
    ax.set_box_aspect((0.5, 0.9, 0.4))
    ax.view_init(elev=22, azim=-62)
    ax.tick_params(labelsize=7)
    ax.set_title("instance_markers (boxes, labels) and instance_points, depth camera frame", fontsize=10)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out)
    print(f"wrote {args.out} ({len(specs)} markers for {len(located)} located instances)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
