"""The 3-D markers of located instances, without ROS: what RViz and Foxglove draw for a frame.

Per located instance two markers, both with the instance id as marker id: a box in namespace
`instances` (the Instance3D box: `box_center`, `box_size`, half transparent) and a label in
namespace `labels` ("<id> <phrase> <distance> m", above the box). The colour is the instance
id's overlay colour (`overlay.color_of`), so a box and its mask in the overlay match. A viewer
keeps a marker until it is replaced or deleted, so every instance shown on the previous frame
and not located on this one gets a DELETE of both its markers (`MarkerSet`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from instructsam_ros.messages.overlay import color_of

BOX_NAMESPACE = "instances"
LABEL_NAMESPACE = "labels"
BOX_ALPHA = 0.5
# A flat object facing the camera has a box of (almost) no depth: viewers refuse or hide a zero
# scale, so each side is drawn at least this long (metres).
MIN_BOX_SIDE = 0.005
LABEL_HEIGHT = 0.04  # metres, the height of a capital letter in the viewer
ADD, DELETE = "add", "delete"
BOX, TEXT = "box", "text"

Vector = tuple[float, float, float]


@dataclass(frozen=True)
class LocatedInstance:
    """An instance with a 3-D location (Instance3D status OK), in the depth camera's frame."""

    id: int
    phrase: str
    box_center: Vector
    box_size: Vector
    distance: float  # metres from the camera to its centre


@dataclass(frozen=True)
class MarkerSpec:
    """One marker as a viewer takes it (the ROS message is filled from this, nothing else)."""

    namespace: str
    id: int
    action: str  # ADD or DELETE
    kind: str = BOX  # BOX or TEXT (ADD only)
    position: Vector = (0.0, 0.0, 0.0)
    scale: Vector = (0.0, 0.0, 0.0)
    rgba: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    text: str = ""


def label_text(instance: LocatedInstance) -> str:
    return f"{instance.id} {instance.phrase} {instance.distance:.2f} m"


def instance_markers(instance: LocatedInstance) -> tuple[MarkerSpec, MarkerSpec]:
    """The box and the label of one located instance (optical frame: y points down, so the
    label sits at the box's top, smaller y)."""
    red, green, blue = (c / 255.0 for c in color_of(instance.id))
    size = tuple(max(float(s), MIN_BOX_SIDE) for s in instance.box_size)
    cx, cy, cz = (float(v) for v in instance.box_center)
    box = MarkerSpec(BOX_NAMESPACE, instance.id, ADD, BOX, (cx, cy, cz), size, (red, green, blue, BOX_ALPHA))
    label = MarkerSpec(LABEL_NAMESPACE, instance.id, ADD, TEXT, (cx, cy - size[1] / 2 - LABEL_HEIGHT, cz),
                       (0.0, 0.0, LABEL_HEIGHT), (red, green, blue, 1.0), label_text(instance))
    return box, label


class MarkerSet:
    """The markers a viewer holds for one camera: each frame's markers, and DELETEs for the
    instances it showed that this frame did not locate."""

    def __init__(self) -> None:
        self._shown: set[int] = set()

    def update(self, located: Sequence[LocatedInstance]) -> list[MarkerSpec]:
        """Every marker of this frame: the boxes and labels of `located`, then the DELETEs."""
        specs = [marker for instance in located for marker in instance_markers(instance)]
        now = {instance.id for instance in located}
        for gone in sorted(self._shown - now):
            specs += [MarkerSpec(BOX_NAMESPACE, gone, DELETE), MarkerSpec(LABEL_NAMESPACE, gone, DELETE)]
        self._shown = now
        return specs

    def forget(self) -> None:
        """No viewer subscribes: the next one starts from nothing."""
        self._shown = set()
