"""Point sampling for mask losses: evaluate masks at a few thousand points instead of every pixel.

Why: a 288x288 mask has 82944 pixels; the release (like Mask2Former) supervises each matched
mask on 12544 points, most of them where the prediction is uncertain (logit near 0), which is
cheaper and concentrates the gradient on boundaries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(masks: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Read `masks` [N, H, W] at `coords` [N, P, 2] (x, y in [0, 1]) -> [N, P].

    Coordinates are in the unit square of the whole image (align_corners=False semantics), so
    masks of different resolutions sampled at the same coords read the same image locations.
    `mode` is grid_sample's: "bilinear" (smooth) or "nearest" (reads the pixel the point is in).
    """
    grid = coords.to(masks.dtype) * 2.0 - 1.0  # grid_sample wants [-1, 1]
    sampled = F.grid_sample(masks.unsqueeze(1), grid.unsqueeze(1), mode=mode, align_corners=False)
    return sampled[:, 0, 0, :]  # [N, 1, 1, P] -> [N, P]


def uncertain_point_coords(
    mask_logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Pick `num_points` coords per mask [N, H, W]: mostly the most uncertain, the rest uniform.

    Draw `oversample_ratio * num_points` uniform candidates, keep the
    `importance_sample_ratio * num_points` whose logit is closest to 0 (uncertainty = -|logit|),
    and fill up with fresh uniform points. Returns [N, num_points, 2] in [0, 1].
    """
    n = mask_logits.shape[0]
    device = mask_logits.device
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(n, num_candidates, 2, generator=generator, device="cpu").to(device)
    with torch.no_grad():
        uncertainty = -point_sample(mask_logits.detach().float(), candidates, mode).abs()  # [N, C]
    num_uncertain = min(int(importance_sample_ratio * num_points), num_candidates)
    num_random = num_points - num_uncertain
    top = uncertainty.topk(num_uncertain, dim=1).indices  # [N, U]
    chosen = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        extra = torch.rand(n, num_random, 2, generator=generator, device="cpu").to(device)
        chosen = torch.cat([chosen, extra], dim=1)
    return chosen
