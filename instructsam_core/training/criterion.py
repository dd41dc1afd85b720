"""The training loss of the release: text CE + matched mask BCE/Dice on sampled points + score BCE.

    loss = 1.0 * text_ce + 4.0 * mask_bce + 0.25 * mask_dice + 1.0 * score_bce

- Matching: `HungarianMatcher` per phrase (see matcher.py).
- Mask losses: each matched (query, instance) pair is compared on `num_points` points chosen by
  uncertainty-based importance sampling (point_sampling.py; read bilinearly, the release's
  `point_sample`); both terms are summed over pairs and divided by this process's number of
  matched pairs (the release's per-process mean; DDP then averages the gradients).
- Score loss: BCE over all 10 queries of every phrase. A matched query's target is the soft
  Dice of its (detached) mask against its instance, (2 sum(p g) + 1e-6) / (sum p + sum g + 1e-6),
  at least 0.1, so the score learns to predict mask quality; an unmatched query's target is 0.
- Which phrases take part (`active`, per phrase; dataset.supervise): the release trains the
  mask and score terms only for samples with a mask target; the phrases of other samples train
  the text cross-entropy alone. A no-target phrase of a sample that does train masks arrives
  with one all-zero placeholder instance (the release) or none (its scores all go towards 0).
- Text CE: next-token cross entropy on the labels the processor built (-100 = ignored, which
  covers the prompt, every `[SEG]` and the token after it).
- Optional semantic term (weight 0 in the release): BCE + Dice between SAM3's semantic head
  (one map per phrase) and the union of the phrase's instances, all-zero for a no-target phrase.
  A detector trained from scratch learns "where, if anywhere, does this phrase match" from this
  dense signal far sooner than from the set loss, which says nothing about an absent phrase
  except through 10 score logits; the released SAM3 arrives with that knowledge.
- Optional presence term (the release has no presence head): BCE between SAM3's presence logit
  of each phrase and "the phrase has at least one instance". It trains the presence token to
  answer the image-level question the ten instance scores are bad at learning from scratch
  (their targets are mostly 0 for present phrases too); at inference it scales every score.
- Score targets: "dice" (the release, above), "binary" (1 for matched queries) or "mask_iou":
  one-to-many, 1 for every query whose mask (logit > 0) has IoU >= 0.5 with an instance of its
  phrase, matched or not. With score-free matching several queries come to cover one instance;
  a one-to-one target would call all but one of them wrong although their masks are right, and
  the config's mask NMS keeps the best of them at inference.
- Optional outside term (weight 0 in the release): for every query the matching left without an
  instance, BCE towards 0 on the pixels that belong to no instance of its phrase (for a
  no-target phrase: every pixel), averaged over those pixels and queries. The release says
  nothing to an unmatched query's mask; from scratch that leaves the one conditioning that
  multiplies phrase and pixel features - a query's mask is the dot product of the two - without
  any signal about what the phrase excludes, and a "circles" query keeps a square's mask. The
  semantic head, whose phrase conditioning is additive, learned colour but never shape.
- Optional region term (no region head in the release): BCE between the region head's logits
  [P, Q] (region_head.py: each query's mask judged on the image's own pixels) and the score
  targets above. It is the term that teaches shape: for a hard negative ("red circles" where
  only a red square is) the masks still land on the red square, and the target says no.
- Optional box terms (weight 0 in the release): L1 and generalized IoU between a matched query's
  box and its instance's tight box. The release fine-tunes a pretrained SAM3 whose box head
  already works; a detector trained from scratch needs them, because SAM3's decoder layers bias
  their image attention towards the previous layer's boxes (box relative-position bias).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from instructsam_core.training.boxes import generalized_iou, masks_to_boxes
from instructsam_core.training.matcher import HungarianMatcher, MatchResult, resize_targets
from instructsam_core.training.point_sampling import point_sample, uncertain_point_coords

IGNORE_INDEX = -100
LOSS_TERMS = ("text", "mask_bce", "mask_dice", "score", "box_l1", "box_giou", "semantic", "presence", "outside",
              "region")
SCORE_TARGETS = ("dice", "binary", "mask_iou")
# A query "has found" an instance when its binarised mask overlaps it this much (AP50's rule).
FOUND_IOU = 0.5


@dataclass
class LossWeights:
    """Weights of the four terms; defaults are the release's."""

    text: float = 1.0
    mask_bce: float = 4.0
    mask_dice: float = 0.25
    score: float = 1.0
    box_l1: float = 0.0
    box_giou: float = 0.0
    semantic: float = 0.0
    presence: float = 0.0
    outside: float = 0.0
    region: float = 0.0


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row 1 - soft Dice for logits/targets [N, P] -> [N] (with +1 smoothing, as in the matcher)."""
    probs = logits.sigmoid()
    numerator = 2.0 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def soft_dice(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-row soft Dice coefficient (2 sum(p t) + eps) / (sum p + sum t + eps) -> [N] (the release's
    `dice_score`; 1 when both are empty)."""
    probs = logits.sigmoid()
    numerator = 2.0 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (numerator + eps) / (denominator + eps)


def binary_mask_iou(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of every bool mask [Q, h, w] with every bool mask [G, h, w] -> [Q, G] (0 where both are empty)."""
    p = predictions.flatten(1).float()
    t = targets.flatten(1).float().to(p.device)
    intersection = p @ t.T
    union = p.sum(-1)[:, None] + t.sum(-1)[None, :] - intersection
    return intersection / union.clamp(min=1.0)


def text_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE: position t predicts labels[t + 1]; mean over non-ignored targets (0 if none)."""
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:].to(logits.device)
    valid = shifted_labels != IGNORE_INDEX
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(shifted_logits[valid], shifted_labels[valid])


class SetCriterion:
    """Computes the loss dict for one batch of phrases (see the module docstring)."""

    def __init__(
        self,
        weights: LossWeights | None = None,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        min_score_target: float = 0.1,
        score_target: str = "dice",
        matcher: HungarianMatcher | None = None,
        point_mode: str = "bilinear",
    ) -> None:
        self.weights = weights or LossWeights()
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.min_score_target = min_score_target
        if score_target not in SCORE_TARGETS:
            raise ValueError(f"score_target must be one of {', '.join(SCORE_TARGETS)}, got {score_target!r}")
        # "dice" (the release): a matched query's target is its mask quality. "binary": 1, which
        # separates present from absent phrases faster for a small model trained from scratch.
        # "mask_iou": one-to-many - every query whose mask is a good mask of some instance (IoU >=
        # 0.5), matched or not; its duplicates are removed at inference by mask NMS.
        self.score_target = score_target
        self.matcher = matcher or HungarianMatcher()
        # "bilinear" (the release) reads logits and labels between grid cells; "nearest" keeps point
        # labels exactly 0/1, so a prediction right on every pixel has zero loss (bilinear labels
        # are 0.5 on every boundary, where BCE cannot go below ln 2).
        self.point_mode = point_mode

    def mask_losses(
        self,
        mask_logits: torch.Tensor,
        targets: list[torch.Tensor],
        match: MatchResult,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Point-sampled BCE and Dice, each summed over matched pairs / number of pairs."""
        src, tgt = [], []
        size = tuple(mask_logits.shape[-2:])
        for phrase, (queries, instances) in enumerate(zip(match.query_indices, match.target_indices)):
            if queries.numel() == 0:
                continue
            src.append(mask_logits[phrase, queries.to(mask_logits.device)])
            # Targets live on the logit grid (nearest resize), the grid the matcher used.
            tgt.append(resize_targets(targets[phrase][instances], size).to(mask_logits.device))
        num_pairs = max(sum(s.shape[0] for s in src), 1)
        if not src:
            zero = mask_logits.sum() * 0.0  # keeps the graph connected (DDP needs every grad)
            return zero, zero.clone()
        src_masks = torch.cat(src).float()
        tgt_masks = torch.cat(tgt).float()
        coords = uncertain_point_coords(
            src_masks, self.num_points, self.oversample_ratio, self.importance_sample_ratio, generator,
            self.point_mode,
        )
        with torch.no_grad():
            point_labels = point_sample(tgt_masks, coords, self.point_mode)
        point_logits = point_sample(src_masks, coords, self.point_mode)
        bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(-1)
        dice = dice_loss(point_logits, point_labels)
        return bce.sum() / num_pairs, dice.sum() / num_pairs

    def box_losses(
        self, boxes: torch.Tensor, mask_size: tuple[int, int], targets: list[torch.Tensor], match: MatchResult
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L1 and (1 - GIoU) between matched boxes [P, Q, 4] (xyxy, [0, 1]) and the instances' tight boxes."""
        src, tgt = [], []
        for phrase, (queries, instances) in enumerate(zip(match.query_indices, match.target_indices)):
            if queries.numel() == 0:
                continue
            src.append(boxes[phrase, queries.to(boxes.device)])
            grid = resize_targets(targets[phrase][instances], mask_size).to(boxes.device) > 0.5
            tgt.append(masks_to_boxes(grid))
        num_pairs = max(sum(s.shape[0] for s in src), 1)
        if not src:
            zero = boxes.sum() * 0.0
            return zero, zero.clone()
        src_boxes, tgt_boxes = torch.cat(src).float(), torch.cat(tgt)
        l1 = (src_boxes - tgt_boxes).abs().sum(-1)
        giou = 1.0 - generalized_iou(src_boxes, tgt_boxes)
        return l1.sum() / num_pairs, giou.sum() / num_pairs

    def semantic_losses(self, semantic_logits: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """Mean over phrases of pixel BCE + Dice between `semantic_logits` [P, h, w] and the union
        of each phrase's instances (nearest-resized to the logit grid; empty for no target)."""
        size = tuple(semantic_logits.shape[-2:])
        union = torch.stack([
            resize_targets(t, size).amax(dim=0) if t.shape[0] else semantic_logits.new_zeros(size)
            for t in targets
        ]).to(semantic_logits.device)
        logits = semantic_logits.float().flatten(1)
        union = union.flatten(1)
        bce = F.binary_cross_entropy_with_logits(logits, union, reduction="none").mean(-1)
        return (bce + dice_loss(logits, union)).mean()

    @staticmethod
    def outside_loss(mask_logits: torch.Tensor, targets: list[torch.Tensor], match: MatchResult) -> torch.Tensor:
        """Mean over unmatched queries of the mean BCE towards 0 of their mask logits [P, Q, h, w] on
        the pixels outside every instance of their phrase (all pixels for a no-target phrase)."""
        size = tuple(mask_logits.shape[-2:])
        total, count = mask_logits.new_zeros(()), 0
        for phrase, phrase_targets in enumerate(targets):
            unmatched = torch.ones(mask_logits.shape[1], dtype=torch.bool, device=mask_logits.device)
            unmatched[match.query_indices[phrase].to(mask_logits.device)] = False
            if not bool(unmatched.any()):
                continue
            if phrase_targets.shape[0]:
                outside = resize_targets(phrase_targets, size).amax(dim=0).to(mask_logits.device) < 0.5
            else:
                outside = torch.ones(size, dtype=torch.bool, device=mask_logits.device)
            pixels = int(outside.sum())
            if pixels == 0:
                continue
            logits = mask_logits[phrase, unmatched].float()[:, outside]  # [U, pixels]
            # BCE(x, 0) = softplus(x); each query weighs the same whatever the outside area.
            total = total + F.softplus(logits).mean(-1).sum()
            count += logits.shape[0]
        if count == 0:
            return mask_logits.sum() * 0.0  # keeps the graph connected (DDP needs every grad)
        return total / count

    @staticmethod
    def presence_loss(presence_logits: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """Mean BCE between presence logits [P] and whether each phrase has any instance."""
        present = torch.tensor([float(t.shape[0] > 0) for t in targets], device=presence_logits.device)
        return F.binary_cross_entropy_with_logits(presence_logits.float(), present)

    def score_targets(self, mask_logits: torch.Tensor, targets: list[torch.Tensor], match: MatchResult) -> torch.Tensor:
        """[P, Q] targets: matched queries get max(soft Dice of their mask, 0.1) (or 1 with
        score_target "binary"); the rest 0. With "mask_iou": 1 for every query whose mask
        (logit > 0) has IoU >= 0.5 with some instance of its phrase, else 0 - matching aside."""
        score_target = torch.zeros(mask_logits.shape[:2], device=mask_logits.device)
        size = tuple(mask_logits.shape[-2:])
        if self.score_target == "mask_iou":
            with torch.no_grad():
                for phrase, phrase_targets in enumerate(targets):
                    if phrase_targets.shape[0] == 0:
                        continue
                    iou = binary_mask_iou(mask_logits[phrase] > 0, resize_targets(phrase_targets, size) > 0.5)
                    score_target[phrase] = (iou.amax(dim=1) >= FOUND_IOU).float()
            return score_target
        with torch.no_grad():
            for phrase, (queries, instances) in enumerate(zip(match.query_indices, match.target_indices)):
                if queries.numel() == 0:
                    continue
                queries = queries.to(mask_logits.device)
                if self.score_target == "binary":
                    score_target[phrase, queries] = 1.0
                    continue
                gt = resize_targets(targets[phrase][instances], size).to(mask_logits.device).flatten(1)
                quality = soft_dice(mask_logits[phrase, queries].float().flatten(1), gt)
                score_target[phrase, queries] = quality.clamp_min(self.min_score_target)
        return score_target

    def __call__(
        self,
        mask_logits: torch.Tensor | None,
        score_logits: torch.Tensor | None,
        targets: list[torch.Tensor],
        text_logits: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        pred_boxes: torch.Tensor | None = None,
        semantic_logits: torch.Tensor | None = None,
        presence_logits: torch.Tensor | None = None,
        region_logits: torch.Tensor | None = None,
        active: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return {"loss", "text", "mask_bce", "mask_dice", "score", "box_l1", "box_giou", "semantic",
        "presence", "outside", "region"}: the unweighted terms and the weighted total.

        `mask_logits` [P, Q, h, w] (None when the batch has no query block), `score_logits` [P, Q],
        `targets[p]` bool/float [G_p, H, W] (G_p may be 0), `text_logits` [B, L, V] with `labels`
        [B, L] (optional; text term 0 without them), `pred_boxes` [P, Q, 4] xyxy in [0, 1]
        (optional; box terms 0 without them), `semantic_logits` [P, h, w] (optional; semantic term 0
        without them), `presence_logits` [P] (optional; always part of the total when given, even at
        weight 0, so that DDP sees the head used), `region_logits` [P, Q] (optional; likewise),
        `active` [P] bool (optional; the phrases that train the set terms, all by default).
        """
        text = text_cross_entropy(text_logits, labels) if text_logits is not None and labels is not None else None
        outputs = (mask_logits, score_logits, pred_boxes, semantic_logits, presence_logits, region_logits)
        # Outputs of phrases left out still join the total (times 0): every process then has the
        # same graph shape, whatever its samples.
        present = [t for t in outputs if t is not None]
        device = present[0].device if present else (text.device if text is not None else None)
        anchor = sum((t.float().sum() * 0.0 for t in present), torch.zeros((), device=device))
        if mask_logits is not None and active is not None and not bool(active.all()):
            keep = active.to(mask_logits.device).nonzero().flatten()
            targets = [targets[i] for i in keep.tolist()]
            outputs = tuple(None if t is None else t.index_select(0, keep) for t in outputs)
        if outputs[0] is None or outputs[0].shape[0] == 0:
            zero = anchor + (text * 0.0 if text is not None else 0.0)
            terms = {key: zero.detach().clone() for key in LOSS_TERMS}
            terms["text"] = text if text is not None else zero.detach().clone()
            terms["loss"] = self.weights.text * terms["text"] + anchor
            return terms
        terms = self._set_terms(text, *outputs[:2], targets, generator, *outputs[2:])
        terms["loss"] = terms["loss"] + anchor
        return terms

    def _set_terms(self, text, mask_logits, score_logits, targets, generator, pred_boxes, semantic_logits,
                   presence_logits, region_logits) -> dict[str, torch.Tensor]:
        """Every term and their weighted sum as "loss" (`text` None: 0)."""
        size = tuple(mask_logits.shape[-2:])
        # The matcher and every set term read the targets on the mask-logit grid: resize them once
        # per step (resize_targets returns a tensor already at that size as it is).
        grid_targets = [resize_targets(t, size) for t in targets]
        match = self.matcher(mask_logits, score_logits, grid_targets)
        mask_bce, mask_dice = self.mask_losses(mask_logits, grid_targets, match, generator)
        score_target = self.score_targets(mask_logits, grid_targets, match)
        score = F.binary_cross_entropy_with_logits(score_logits.float(), score_target)
        text = text if text is not None else score.new_zeros(())
        if pred_boxes is not None:
            box_l1, box_giou = self.box_losses(pred_boxes, size, grid_targets, match)
        else:
            box_l1, box_giou = score.new_zeros(()), score.new_zeros(())
        w = self.weights
        total = w.text * text + w.mask_bce * mask_bce + w.mask_dice * mask_dice + w.score * score
        if w.box_l1 or w.box_giou:
            total = total + w.box_l1 * box_l1 + w.box_giou * box_giou
        semantic = score.new_zeros(())
        if semantic_logits is not None:
            semantic = self.semantic_losses(semantic_logits, targets)
            if w.semantic:
                total = total + w.semantic * semantic
        presence = score.new_zeros(())
        if presence_logits is not None:
            presence = self.presence_loss(presence_logits, targets)
            total = total + w.presence * presence
        outside = score.new_zeros(())
        if w.outside:
            outside = self.outside_loss(mask_logits, grid_targets, match)
            total = total + w.outside * outside
        region = score.new_zeros(())
        if region_logits is not None:
            region = F.binary_cross_entropy_with_logits(region_logits.float(), score_target)
            total = total + w.region * region
        return {"loss": total, "text": text, "mask_bce": mask_bce, "mask_dice": mask_dice, "score": score,
                "box_l1": box_l1, "box_giou": box_giou, "semantic": semantic, "presence": presence,
                "outside": outside, "region": region}
