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

At inference (`judge_regions`) every separate region of a mask is judged on its own crop and the
query keeps the region judged best. A query's mask often holds, besides its object, a faint
fragment on another object (the detector is shape-blind, so a "squares" query also lights up
parts of the triangle beside it); which fragments cross logit 0 changes with where the objects
fall on the 14-px patch grid. Cropped around all of them, the object shrank to a corner of the
crop and the verdict swung from 0.7 to 0.2 when the scene moved half a patch (measured on the
demo's panning scene, BENCHMARKS.md); judged one region at a time, the verdict stays put, and a
fragment on the object the phrase means becomes a candidate of its own. Training keeps judging
each mask whole (`forward`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instructsam_core.training.boxes import masks_to_boxes

# Share of the box side added on every side before cropping: the outline must stay in the crop.
CROP_MARGIN = 0.15
# At inference, how many separate regions of one mask the head judges (those of the largest
# probability mass); 2, 3 and 5 scored within 0.2 points of each other on the tuning split.
MAX_REGIONS = 3
# Logit given to the pixels of a mask's other regions when one region is judged or kept: far
# below 0, finite (bilinear upsampling of -inf can give NaN).
CLEARED_LOGIT = -20.0


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


def connected_regions(inside: torch.Tensor) -> torch.Tensor:
    """Labels [N, h, w] (int64, on the input's device) of the 8-connected regions of binary masks
    [N, h, w]: 0 outside, every region of every mask its own label 1, 2, ... (scipy's labelling
    on the CPU: 0.3 ms for ten 48x48 masks, where spreading labels by 3x3 max-pooling in torch
    took 4 ms on the demo's masks and 35 ms on ragged ones)."""
    from scipy import ndimage  # here, not at import: only inference with a region head needs it

    # 3x3 connectivity within each mask, none across masks.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    labels, _ = ndimage.label(inside.detach().cpu().numpy(), structure=structure)
    return torch.from_numpy(labels.astype(np.int64)).to(inside.device)


def split_regions(mask_logits: torch.Tensor, max_regions: int = MAX_REGIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits [N, h, w] -> (candidates [N, K, h, w], valid [N, K]), K = max_regions: candidate
    k is the mask with every pixel of its other regions (logit > 0, 8-connected) set to
    CLEARED_LOGIT, for its K regions of largest probability mass; the border of the kept region
    is untouched (its neighbours outside are <= 0 already). Candidates past the mask's number of
    regions are not valid; an empty mask has one valid candidate, itself."""
    n = mask_logits.shape[0]
    inside = mask_logits > 0
    labels = connected_regions(inside)
    weight = (mask_logits.float().sigmoid() * inside).flatten(1)
    # mass[i, l]: probability mass of region l in mask i (0 where mask i has no region l).
    mass = weight.new_zeros(n, int(labels.max()) + 1).scatter_add_(1, labels.flatten(1), weight)
    mass[:, 0] = -1.0  # label 0 is the outside, no region
    top = mass.topk(min(max_regions, mass.shape[1]), dim=1)
    region = labels[:, None] == top.indices[:, :, None, None]
    others = inside[:, None] & ~region
    candidates = mask_logits[:, None].expand(-1, region.shape[1], -1, -1).masked_fill(others, CLEARED_LOGIT)
    valid = top.values > 0
    valid[:, 0] = True
    return candidates, valid


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
        # In the head's own dtype: the SAM3 pixels stay float32 when the model runs in bfloat16.
        crops = crop_regions(images.detach(), masks, boxes, self.crop_size).to(self.bias.dtype)
        region = self.encoder(crops.flatten(0, 1)).view(phrases, queries, -1)
        tokens = self.phrase_in(phrase_embeds.detach().to(region.dtype))
        scale = 1.0 / math.sqrt(region.shape[-1])
        # Each region pools the phrase tokens it finds relevant (a colour word, a shape word).
        attention = torch.einsum("pqd,ptd->pqt", self.phrase_query(region), self.phrase_key(tokens)) * scale
        attention = attention.masked_fill(~phrase_mask.bool()[:, None, :], float("-inf")).softmax(dim=-1)
        phrase = torch.einsum("pqt,ptd->pqd", attention, self.phrase_value(tokens))
        return (region * phrase).sum(-1) * scale + self.bias

    def judge_regions(
        self,
        images: torch.Tensor,
        mask_logits: torch.Tensor,
        phrase_embeds: torch.Tensor,
        phrase_mask: torch.Tensor,
        max_regions: int = MAX_REGIONS,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: each of the `max_regions` largest separate regions of every query's mask is
        judged on its own crop (`forward` on the mask with its other regions cleared), and the
        query keeps the region judged best -> (logits [P, Q], mask logits [P, Q, h, w] with the
        other regions at CLEARED_LOGIT). Same arguments as `forward`."""
        phrases, queries, h, w = mask_logits.shape
        candidates, valid = split_regions(mask_logits.detach().flatten(0, 1), max_regions)
        k = candidates.shape[1]
        candidates = candidates.view(phrases, queries, k, h, w)
        # All K x Q candidates of a phrase are cropped from its image in one call.
        stacked = candidates.transpose(1, 2).reshape(phrases, k * queries, h, w)
        logits = self(images, stacked, phrase_embeds, phrase_mask).view(phrases, k, queries).transpose(1, 2)
        logits = logits.masked_fill(~valid.view(phrases, queries, k), float("-inf"))
        best = logits.argmax(dim=-1, keepdim=True)  # [P, Q, 1]
        kept = candidates.gather(2, best[..., None, None].expand(-1, -1, -1, h, w))[:, :, 0]
        return logits.gather(-1, best)[..., 0], kept


__all__ = [
    "RegionScoreHead", "square_boxes", "crop_regions", "connected_regions", "split_regions",
    "CROP_MARGIN", "MAX_REGIONS", "CLEARED_LOGIT",
]
