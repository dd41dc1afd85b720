"""Box helpers of the optional box terms: tight boxes of masks and generalized IoU.

The release trains no box loss (its SAM3 arrives with a working box head); a detector trained
from scratch uses these in the loss and in the matching cost (see criterion.py and matcher.py).
Boxes are (x0, y0, x1, y1) in [0, 1] units of the mask grid.
"""
from __future__ import annotations

import torch


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of binary masks [N, h, w] -> [N, 4]; all zeros for an empty mask."""
    n, h, w = masks.shape
    rows = masks.any(dim=2)  # [N, h]
    cols = masks.any(dim=1)  # [N, w]
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).min(dim=1).values
    y1 = torch.where(rows, ys + 1, 0).max(dim=1).values
    x0 = torch.where(cols, xs, w).min(dim=1).values
    x1 = torch.where(cols, xs + 1, 0).max(dim=1).values
    boxes = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], dim=1).float()
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of boxes [..., 4] that broadcast against each other: IoU - (hull - union) / hull.

    Row-wise for two [N, 4]; pairwise [Q, G] for a[:, None] and b[None].
    """
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    inter_w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    inter_h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = inter_w * inter_h
    union = area_a + area_b - inter
    iou = inter / union.clamp_min(1e-7)
    hull_w = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    hull_h = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    hull = (hull_w * hull_h).clamp_min(1e-7)
    return iou - (hull - union) / hull


__all__ = ["masks_to_boxes", "generalized_iou"]
