"""What a prediction is: instances on the input image's pixel grid.

This is the contract between the model side (Predictor) and every consumer (CLI, evaluation,
ROS node). Masks are always at the resolution of the image that was passed in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Instance:
    """One segmented instance.

    `box` is (x0, y0, x1, y1) in pixels, x1/y1 exclusive, i.e. the tight box of `mask`
    (all zeros when the mask is empty). `phrase_index` points into `Prediction.phrases`;
    `query_index` is the instance query (0..9) that produced it.
    """

    phrase: str
    score: float
    mask: np.ndarray  # bool [H, W]
    box: tuple[float, float, float, float]
    phrase_index: int = 0
    query_index: int = 0

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox_xywh(self) -> list[float]:
        x0, y0, x1, y1 = self.box
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


@dataclass
class Prediction:
    """Everything one (image, instruction) pair produced.

    `instances` are those above the threshold, sorted by score (highest first), capped at
    the predictor's `max_instances`. `answer` is the generated text (empty on the
    single-forward path). `timings` holds seconds per stage.
    """

    instruction: str
    phrases: list[str]
    instances: list[Instance]
    image_size: tuple[int, int]  # (height, width)
    answer: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight (x0, y0, x1, y1) box of a boolean mask, x1/y1 exclusive; zeros for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
