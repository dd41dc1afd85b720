"""Hungarian matching of the 10 instance queries of a phrase to its ground-truth instances.

Each phrase has 10 query predictions (mask logits + a score logit) and 0..10 ground-truth
instance masks. The release matches them one-to-one by minimum total cost (DETR-style set
prediction), per phrase, on the model's mask-logit grid (288x288 at full size):

    cost[q, g] = 0.5 * dice(q, g) + 2.0 * mean_pixel_bce(q, g) + 1.0 * softplus(-score_logit[q])

where dice(q, g) = 1 - (2 sum(p g) + eps) / (sum p + sum g + eps), p = sigmoid, eps 1e-3 in the
release (its `DiceCost`); a recipe may smooth more (`loss.matcher.dice_smooth`).

The score term is the BCE of the query's score against "this query is an object"
(-log sigmoid(x) = softplus(-x)), so confident queries are cheaper to match. The weights are
recipe keys (`loss.matcher`); a model trained from scratch matches on the masks alone (score
weight 0), because the unbounded score term lets one early-confident query take every instance.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def resize_targets(targets: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of binary masks [N, H, W] to `size`, as float {0, 1}."""
    targets = targets.float()
    if targets.numel() == 0:
        return targets.new_zeros((targets.shape[0], *size))
    if tuple(targets.shape[-2:]) == tuple(size):
        return targets
    return F.interpolate(targets.unsqueeze(1), size=size, mode="nearest").squeeze(1)


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1e-3) -> torch.Tensor:
    """1 - soft Dice between every prediction [Q, N] (logits, flattened) and target [G, N] -> [Q, G].

    dice = (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth), p = sigmoid(logit); the smoothing
    keeps an empty prediction vs an empty target at cost 0 instead of 0/0.
    """
    probs = logits.sigmoid()
    numerator = 2.0 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + smooth) / (denominator + smooth)


def pairwise_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel BCE between every prediction [Q, N] and target [G, N] -> [Q, G].

    BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x); summing it over pixels for all pairs
    is two matrix products.
    """
    num_pixels = logits.shape[-1]
    positive = F.softplus(-logits)  # cost of each pixel if the target is 1
    negative = F.softplus(logits)  # ... if it is 0
    return (positive @ targets.T + negative @ (1.0 - targets).T) / num_pixels


@dataclass
class MatchResult:
    """For each phrase: which query indices were matched to which target indices (same length)."""

    query_indices: list[torch.Tensor]
    target_indices: list[torch.Tensor]


class HungarianMatcher:
    """Per-phrase one-to-one assignment of queries to ground-truth instances (no gradient)."""

    def __init__(self, cost_dice: float = 0.5, cost_mask: float = 2.0, cost_score: float = 1.0,
                 dice_smooth: float = 1e-3) -> None:
        self.cost_dice = cost_dice
        self.cost_mask = cost_mask
        self.cost_score = cost_score
        self.dice_smooth = dice_smooth

    @torch.no_grad()
    def cost_matrix(self, mask_logits: torch.Tensor, score_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Total cost [Q, G] for one phrase: `mask_logits` [Q, h, w], `score_logits` [Q], `targets` [G, H, W]."""
        size = tuple(mask_logits.shape[-2:])
        flat_logits = mask_logits.flatten(1).float()
        flat_targets = resize_targets(targets, size).flatten(1).to(flat_logits.device)
        cost = self.cost_dice * pairwise_dice_cost(flat_logits, flat_targets, self.dice_smooth)
        cost = cost + self.cost_mask * pairwise_bce_cost(flat_logits, flat_targets)
        cost = cost + self.cost_score * F.softplus(-score_logits.float())[:, None]
        return cost

    @torch.no_grad()
    def __call__(
        self, mask_logits: torch.Tensor, score_logits: torch.Tensor, targets: list[torch.Tensor]
    ) -> MatchResult:
        """Match every phrase: `mask_logits` [P, Q, h, w], `score_logits` [P, Q], `targets[p]` [G_p, H, W]."""
        if len(targets) != mask_logits.shape[0]:
            raise ValueError(f"{len(targets)} target sets for {mask_logits.shape[0]} phrases")
        query_indices, target_indices = [], []
        for phrase, phrase_targets in enumerate(targets):
            if phrase_targets.shape[0] == 0:
                empty = torch.zeros(0, dtype=torch.long)
                query_indices.append(empty)
                target_indices.append(empty.clone())
                continue
            cost = self.cost_matrix(mask_logits[phrase], score_logits[phrase], phrase_targets)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            query_indices.append(torch.as_tensor(np.asarray(rows), dtype=torch.long))
            target_indices.append(torch.as_tensor(np.asarray(cols), dtype=torch.long))
        return MatchResult(query_indices, target_indices)
