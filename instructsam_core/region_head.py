"""A second look at every instance: its pixels under its mask, scored against its phrase.

Why (a from-scratch option; the release has no such head): the small detector trained from
scratch sees the image through 14x14-pixel patches, and the phrase meets the image only at that
12x12 grid (DETR encoder, semantic head). The synthetic shapes are 14-60 px across at 168 px, so
one or two patches hold a whole object, and its shape has to survive a 588 -> 64 linear patch
embedding. Measured (BENCHMARKS.md): the semantic map tells colours apart but not shapes; a
linear probe of the frozen features finds little shape where the phrase is applied. The masks,
however, come out right. This head crops each query's region from the *image* at full
resolution (the box of its mask, squared and padded), stacks the query's mask probabilities on
the crop, and encodes the crop with a small CNN; the phrase's token embeddings are pooled by
attention from that region code, and the score is their scaled dot product. Like the second
stage of a two-stage detector, it judges a proposal on its own pixels instead of the shared
coarse grid.

Every input is detached: the head judges masks and reads phrases, it changes neither. It reads
the phrase's *input* token embeddings, not the detector's prompt features: after SAM3's phrase
projector "circles" and "squares" are nearly the same vector (cosine 0.97-0.98, measured). A
first version that read the prompt features, with gradient, and kept the model's 0.02-std init
stalled SAM3's semantic map (its loss 0.70 instead of 0.41 after 2400 steps) and learnt nothing
itself (BENCHMARKS.md, "This round: a region head").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from instructsam_core.training.boxes import masks_to_boxes

# Share of the box side added on every side before cropping: the outline must stay in the crop.
CROP_MARGIN = 0.15


def square_boxes(mask_logits: torch.Tensor, margin: float = CROP_MARGIN) -> torch.Tensor:
    """Boxes (cx, cy, side) in [0, 1] image units of binarised masks [N, h, w]: the tight box of
    the mask's pixels (logit > 0) made square on its longer side and widened by `margin` of the
    side on every end. An empty mask gets the whole image (cx = cy = 0.5, side = 1)."""
    inside = mask_logits > 0
    x0, y0, x1, y1 = masks_to_boxes(inside).unbind(dim=1)
    side = torch.maximum(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, side], dim=1)
    whole = torch.tensor([0.5, 0.5, 1.0], device=mask_logits.device)
    return torch.where(inside.flatten(1).any(dim=1, keepdim=True), boxes, whole)


def crop_regions(images: torch.Tensor, mask_logits: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear crops [P, Q, C + 1, size, size] of images [P, C, H, W] and of the mask
    probabilities [P, Q, h, w] over square boxes [P, Q, 3] (cx, cy, side in [0, 1]); outside the
    image is 0. The Q crops of one image are read in one sampling call (no copy of the image)."""
    phrases, queries = mask_logits.shape[:2]
    n = phrases * queries
    flat = boxes.reshape(n, 3)
    # affine_grid maps the output square [-1, 1]^2 onto the box in the input's [-1, 1]^2 frame.
    theta = images.new_zeros(n, 2, 3)
    theta[:, 0, 0] = flat[:, 2]
    theta[:, 1, 1] = flat[:, 2]
    theta[:, 0, 2] = flat[:, 0] * 2 - 1
    theta[:, 1, 2] = flat[:, 1] * 2 - 1
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)  # [N, size, size, 2]
    stacked = grid.view(phrases, queries * size, size, 2)
    pixels = F.grid_sample(images, stacked, mode="bilinear", padding_mode="zeros", align_corners=False)
    pixels = pixels.view(phrases, images.shape[1], queries, size, size).transpose(1, 2)
    mask = F.grid_sample(mask_logits.reshape(n, 1, *mask_logits.shape[2:]).sigmoid().to(images.dtype), grid,
                         mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.cat([pixels, mask.view(phrases, queries, 1, size, size)], dim=2)


class RegionScoreHead(nn.Module):
    """Score logits [P, Q] of every query's region (image crop + its mask) against its phrase."""

    def __init__(self, phrase_dim: int, dim: int = 64, image_channels: int = 3, crop_size: int = 16, width: int = 16):
        super().__init__()
        if crop_size % 4:
            raise ValueError(f"crop_size must be a multiple of 4, got {crop_size}")
        self.crop_size = crop_size
        cells = (crop_size // 4) ** 2
        # Two stride-2 stages keep a 4x4 layout (flattened, not pooled): where the pixels are in
        # the crop is what tells a ring from a circle and a triangle from a square. (A variant of
        # width 32 with the first layer strided scored worse on the tuning split: BENCHMARKS.md.)
        self.encoder = nn.Sequential(
            nn.Conv2d(image_channels + 1, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Flatten(), nn.Linear(2 * width * cells, dim), nn.LayerNorm(dim),
        )
        self.phrase_in = nn.Sequential(nn.Linear(phrase_dim, dim), nn.LayerNorm(dim))
        self.phrase_query = nn.Linear(dim, dim)
        self.phrase_key = nn.Linear(dim, dim)
        self.phrase_value = nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.zeros(()))

    def reset_parameters(self) -> None:
        """torch's default initialisation for every layer (the model's 0.02-std normal init makes
        this stack of convolutions nearly linear and slow to start learning), bias 0."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        nn.init.zeros_(self.bias)

    def forward(
        self, images: torch.Tensor, mask_logits: torch.Tensor, phrase_embeds: torch.Tensor, phrase_mask: torch.Tensor
    ) -> torch.Tensor:
        """images [P, C, H, W] (each phrase's image), mask logits [P, Q, h, w], the phrase's token
        embeddings [P, T, E] with mask [P, T] (True = real token) -> logits [P, Q]."""
        phrases, queries = mask_logits.shape[:2]
        masks = mask_logits.detach()
        boxes = square_boxes(masks.flatten(0, 1)).view(phrases, queries, 3)
        crops = crop_regions(images.detach(), masks, boxes, self.crop_size)
        region = self.encoder(crops.flatten(0, 1)).view(phrases, queries, -1)
        tokens = self.phrase_in(phrase_embeds.detach().to(region.dtype))
        scale = 1.0 / math.sqrt(region.shape[-1])
        # Each region pools the phrase tokens it finds relevant (a colour word, a shape word).
        attention = torch.einsum("pqd,ptd->pqt", self.phrase_query(region), self.phrase_key(tokens)) * scale
        attention = attention.masked_fill(~phrase_mask.bool()[:, None, :], float("-inf")).softmax(dim=-1)
        phrase = torch.einsum("pqt,ptd->pqd", attention, self.phrase_value(tokens))
        return (region * phrase).sum(-1) * scale + self.bias


__all__ = ["RegionScoreHead", "square_boxes", "crop_regions", "CROP_MARGIN"]
