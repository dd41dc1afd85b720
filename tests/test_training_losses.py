"""Matcher and loss tests on hand-computed cases."""
import math

import torch

from instructsam_core.training.boxes import generalized_iou, masks_to_boxes
from instructsam_core.training.criterion import (
    LossWeights,
    SetCriterion,
    dice_loss,
    soft_dice,
    text_cross_entropy,
)
from instructsam_core.training.matcher import HungarianMatcher, MatchResult, pairwise_bce_cost, pairwise_dice_cost
from instructsam_core.training.point_sampling import point_sample, uncertain_point_coords


def test_dice_and_bce_costs_on_2x2_by_hand():
    # p = sigmoid([ln3, 0, 0, -ln3]) = [0.75, 0.5, 0.5, 0.25]; target = [1, 0, 0, 0]
    logits = torch.tensor([[math.log(3.0), 0.0, 0.0, -math.log(3.0)]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    # matcher (release eps 1e-3): dice = 1 - (2*0.75 + 1e-3) / (2.0 + 1 + 1e-3)
    expected_cost = 1.0 - (1.5 + 1e-3) / (3.0 + 1e-3)
    assert torch.allclose(pairwise_dice_cost(logits, target), torch.tensor([[expected_cost]], dtype=torch.float64))
    # smoothed by 1 (a recipe option): 1 - 2.5/4; the Dice loss always smooths by 1 (the release's eps=1)
    assert torch.allclose(pairwise_dice_cost(logits, target, 1.0), torch.tensor([[0.375]], dtype=torch.float64))
    assert torch.allclose(dice_loss(logits, target), torch.tensor([0.375], dtype=torch.float64))
    # BCE: pixel 1 -log(0.75)=ln(4/3); pixels 2,3 ln2; pixel 4 -log(0.75)=ln(4/3) -> mean = ln(8/3)/2
    expected = math.log(8.0 / 3.0) / 2.0
    assert torch.allclose(pairwise_bce_cost(logits, target), torch.tensor([[expected]], dtype=torch.float64))
    # soft dice of the score target: (1.5 + 1e-6) / (3.0 + 1e-6)
    expected_dice = (1.5 + 1e-6) / (3.0 + 1e-6)
    assert torch.allclose(soft_dice(logits, target), torch.tensor([expected_dice], dtype=torch.float64))


def test_pairwise_costs_are_all_pairs():
    logits = torch.tensor([[10.0, -10.0], [-10.0, 10.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    dice = pairwise_dice_cost(logits, targets)
    assert dice[0, 0] < 0.01 and dice[1, 1] < 0.01
    # wrong pairing: sum p ~1, sum t 1, overlap ~0 -> 1 - 1e-3 / 2
    assert abs(dice[0, 1].item() - 1.0) < 1e-3 and abs(dice[1, 0].item() - 1.0) < 1e-3


def _disjoint_masks(n, size=16):
    masks = torch.zeros(n, size, size)
    for i in range(n):
        masks[i, :, i * 4 : i * 4 + 3] = 1.0
    return masks


def test_matcher_finds_known_permutation():
    torch.manual_seed(0)
    gt = _disjoint_masks(3)
    logits = torch.randn(10, 16, 16) * 0.1 - 3.0  # unrelated, mostly-empty predictions
    placement = {7: 0, 2: 1, 5: 2}  # query -> gt
    for q, g in placement.items():
        logits[q] = gt[g] * 20.0 - 10.0
    scores = torch.zeros(10)
    match = HungarianMatcher()(logits[None], scores[None], [gt])
    got = dict(zip(match.query_indices[0].tolist(), match.target_indices[0].tolist()))
    assert got == placement


def test_matcher_uses_score_to_break_ties():
    gt = _disjoint_masks(1)
    logits = (gt[0] * 20.0 - 10.0).expand(10, 16, 16).clone()  # every query has the perfect mask
    scores = torch.full((10,), -5.0)
    scores[4] = 5.0  # cheapest softplus(-score)
    match = HungarianMatcher()(logits[None], scores[None], [gt])
    assert match.query_indices[0].tolist() == [4]


def test_matcher_resizes_targets_nearest():
    gt = torch.zeros(1, 32, 32)
    gt[0, :16, :] = 1.0  # top half at 2x the logit resolution
    logits = torch.full((10, 16, 16), -10.0)
    logits[3, :8, :] = 10.0  # top half at the logit resolution
    match = HungarianMatcher()(logits[None], torch.zeros(1, 10), [gt])
    assert match.query_indices[0].tolist() == [3]


def test_perfect_prediction_has_near_zero_mask_loss():
    gt = _disjoint_masks(2)
    logits = torch.full((1, 10, 16, 16), -20.0)
    logits[0, 1] = gt[0] * 40.0 - 20.0
    logits[0, 6] = gt[1] * 40.0 - 20.0
    criterion = SetCriterion(num_points=200, point_mode="nearest")  # nearest: labels exactly 0/1
    out = criterion(logits, torch.zeros(1, 10), [gt], generator=torch.Generator().manual_seed(0))
    assert out["mask_bce"].item() < 1e-6
    assert out["mask_dice"].item() < 1e-3
    # and a wrong prediction is clearly worse
    bad = criterion(-logits, torch.zeros(1, 10), [gt], generator=torch.Generator().manual_seed(0))
    assert bad["mask_bce"].item() > 1.0


def test_no_target_phrase_pushes_every_score_down():
    logits = torch.randn(2, 10, 8, 8, requires_grad=True)
    scores = torch.randn(2, 10, requires_grad=True)
    out = SetCriterion(num_points=50)(logits, scores, [torch.zeros(0, 8, 8), torch.zeros(0, 8, 8)])
    out["loss"].backward()
    # d/dx BCE(x, 0) = sigmoid(x) / N > 0: gradient descent lowers every score
    assert bool((scores.grad > 0).all())
    expected = torch.sigmoid(scores.detach()) / 20.0
    assert torch.allclose(scores.grad, expected, atol=1e-6)
    assert out["mask_bce"].item() == 0.0 and out["mask_dice"].item() == 0.0
    # mask logits stay in the graph (needed under DDP), with zero gradient
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_score_targets_soft_dice_with_floor():
    gt = _disjoint_masks(2)
    logits = torch.full((1, 10, 16, 16), -20.0)
    logits[0, 0] = gt[0] * 40.0 - 20.0  # perfect -> target ~1
    scores = torch.zeros(1, 10)
    scores[0, 0] = 10.0
    scores[0, 9] = 5.0  # query 9 is empty: matched to gt 1 with dice ~0 -> floor 0.1
    criterion = SetCriterion(num_points=64)
    match = criterion.matcher(logits, scores, [gt])
    pairs = dict(zip(match.query_indices[0].tolist(), match.target_indices[0].tolist()))
    assert pairs == {0: 0, 9: 1}
    target = criterion.score_targets(logits, [gt], match)
    assert abs(target[0, 0].item() - 1.0) < 1e-6
    assert abs(target[0, 9].item() - 0.1) < 1e-6
    assert float(target[0, 1:9].abs().sum()) == 0.0


def test_matched_perfect_query_score_is_pushed_up():
    gt = _disjoint_masks(1)
    logits = torch.full((1, 10, 16, 16), -20.0)
    logits[0, 2] = gt[0] * 40.0 - 20.0
    scores = torch.zeros(1, 10, requires_grad=True)
    SetCriterion(num_points=64)(logits, scores, [gt])["loss"].backward()
    assert scores.grad[0, 2] < 0  # target ~1 > sigmoid(0)
    others = torch.cat([scores.grad[0, :2], scores.grad[0, 3:]])
    assert bool((others > 0).all())


def test_point_sample_reads_pixel_centres():
    masks = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75], [0.5, 0.5]]])
    assert torch.allclose(point_sample(masks, coords), torch.tensor([[1.0, 2.0, 3.0, 4.0, 2.5]]))


def test_uncertain_points_concentrate_where_logits_are_zero():
    logits = torch.zeros(1, 8, 8)
    logits[0, :, 4:] = 10.0  # left half uncertain (logit 0), right half confident
    gen = torch.Generator().manual_seed(0)
    coords = uncertain_point_coords(logits, num_points=1000, importance_sample_ratio=1.0, generator=gen)
    assert coords.shape == (1, 1000, 2)
    # bilinear reads logit exactly 0 for x <= centre of column 3 (3.5 / 8)
    assert float(coords[0, :, 0].max()) <= 3.5 / 8 + 1e-6
    mixed = uncertain_point_coords(logits, num_points=1000, importance_sample_ratio=0.75, generator=gen)
    assert float(mixed[0, 750:, 0].max()) > 0.6  # the random quarter covers the whole image


def test_text_cross_entropy_by_hand():
    vocab = 5
    logits = torch.zeros(1, 4, vocab)
    logits[0, 1, 3] = math.log(4.0)  # position 1 predicts token 3 with p = 4 / (4 + 4) = 0.5
    labels = torch.tensor([[-100, -100, 3, 1]])  # targets for positions 1 and 2
    # position 1 -> label 3: -log 0.5; position 2 -> label 1 with uniform logits: log 5
    expected = (math.log(2.0) + math.log(5.0)) / 2.0
    assert abs(text_cross_entropy(logits, labels).item() - expected) < 1e-6
    assert text_cross_entropy(logits, torch.full((1, 4), -100)).item() == 0.0


def test_total_is_weighted_sum():
    torch.manual_seed(1)
    gt = _disjoint_masks(2)
    logits = torch.randn(1, 10, 16, 16)
    text_logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, 2, 3, -100, 1]])
    out = SetCriterion(num_points=100)(logits, torch.randn(1, 10), [gt], text_logits, labels,
                                       generator=torch.Generator().manual_seed(0))
    total = out["text"] + 4.0 * out["mask_bce"] + 0.25 * out["mask_dice"] + 1.0 * out["score"]
    assert torch.allclose(out["loss"], total)
    assert out["text"].item() > 0


def test_masks_to_boxes_and_giou_by_hand():
    masks = torch.zeros(2, 4, 8, dtype=torch.bool)
    masks[0, 1:3, 2:6] = True  # rows 1-2, cols 2-5 -> x0 2/8, y0 1/4, x1 6/8, y1 3/4
    boxes = masks_to_boxes(masks)
    assert torch.allclose(boxes[0], torch.tensor([0.25, 0.25, 0.75, 0.75]))
    assert torch.equal(boxes[1], torch.zeros(4))  # empty mask
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    # identical -> 1; disjoint corners: IoU 0, hull 1, union 0.5 -> 0 - 0.5 / 1
    assert torch.allclose(generalized_iou(a, b), torch.tensor([1.0, -0.5]))
    # Broadcasting gives the pairwise table: row q, column g.
    pairwise = generalized_iou(a[:, None], b[None])
    assert torch.allclose(pairwise, torch.tensor([[1.0, -0.5], [1.0, -0.5]]))


def test_box_terms_only_count_when_weighted():
    gt = _disjoint_masks(1)  # columns 0-2 of a 16x16 grid, all rows
    logits = torch.full((1, 10, 16, 16), -20.0)
    logits[0, 0] = gt[0] * 40.0 - 20.0
    boxes = torch.zeros(1, 10, 4, requires_grad=True)
    with torch.no_grad():
        boxes[0, 0] = torch.tensor([0.0, 0.0, 3 / 16, 1.0])  # exact box of the matched instance
    plain = SetCriterion(num_points=64)(logits, torch.zeros(1, 10), [gt], pred_boxes=boxes)
    assert plain["box_l1"].item() < 1e-6 and plain["box_giou"].item() < 1e-6
    weighted = SetCriterion(num_points=64, weights=LossWeights(box_l1=5.0, box_giou=2.0))
    shifted = boxes.detach().clone()
    shifted[0, 0] = torch.tensor([0.0, 0.0, 3 / 16, 0.5])  # half the height: L1 0.5, IoU 0.5, GIoU 0.5
    out = weighted(logits, torch.zeros(1, 10), [gt], pred_boxes=shifted)
    assert abs(out["box_l1"].item() - 0.5) < 1e-6 and abs(out["box_giou"].item() - 0.5) < 1e-6
    base = out["text"] + 4.0 * out["mask_bce"] + 0.25 * out["mask_dice"] + out["score"]
    assert torch.allclose(out["loss"], base + 5.0 * 0.5 + 2.0 * 0.5)


def test_binary_score_target_ignores_mask_quality():
    gt = _disjoint_masks(1)
    logits = torch.full((1, 10, 16, 16), -20.0)  # every mask empty: soft Dice 0 -> floor 0.1
    criterion = SetCriterion(num_points=64, score_target="binary")
    match = criterion.matcher(logits, torch.zeros(1, 10), [gt])
    target = criterion.score_targets(logits, [gt], match)
    assert target.sum().item() == 1.0 and target[0, match.query_indices[0][0]].item() == 1.0
    dice_target = SetCriterion(num_points=64).score_targets(logits, [gt], match)
    assert abs(dice_target.sum().item() - 0.1) < 1e-6


def test_semantic_term_by_hand():
    # Phrase 0: one instance (columns 0-2 of 16x16, 48 of 256 pixels); phrase 1: two instances;
    # phrase 2: no target. Logits 0 everywhere (p = 0.5): BCE = ln 2 on every pixel, and
    # Dice = (2 * 0.5 * n + 1) / (0.5 * 256 + n + 1) with n the union's pixel count.
    targets = [_disjoint_masks(1), _disjoint_masks(2), torch.zeros(0, 16, 16)]
    criterion = SetCriterion(num_points=64)
    flat = criterion.semantic_losses(torch.zeros(3, 16, 16), targets)
    dice = [1 - (0.5 * 2 * n + 1) / (0.5 * 256 + n + 1) for n in (48, 96, 0)]
    assert torch.allclose(flat, torch.tensor(math.log(2) + sum(dice) / 3))
    # Logits that agree with the union (and are all negative for the no-target phrase): ~0.
    union = torch.stack([t.amax(0) if len(t) else torch.zeros(16, 16) for t in targets])
    perfect = criterion.semantic_losses(union * 40.0 - 20.0, targets)
    assert perfect.item() < 1e-6
    # The term enters the total only with a weight.
    logits = torch.full((3, 10, 16, 16), -20.0)
    scores = torch.full((3, 10), -20.0)
    plain = criterion(logits, scores, targets, semantic_logits=torch.zeros(3, 16, 16),
                      generator=torch.Generator().manual_seed(0))
    weighted = SetCriterion(num_points=64, weights=LossWeights(semantic=2.0))(
        logits, scores, targets, semantic_logits=torch.zeros(3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(plain["semantic"], flat)
    assert torch.allclose(weighted["loss"] - plain["loss"], 2.0 * flat, atol=1e-5)


def test_presence_term_by_hand():
    # Phrases 0 and 1 have instances, phrase 2 none. Presence logits [ln 3, 0, ln 3]:
    # BCE = -ln(0.75), ln 2, -ln(0.25) -> mean (ln(4/3) + ln 2 + ln 4) / 3.
    targets = [_disjoint_masks(1), _disjoint_masks(2), torch.zeros(0, 16, 16)]
    presence = torch.tensor([math.log(3.0), 0.0, math.log(3.0)])
    expected = (math.log(4.0 / 3.0) + math.log(2.0) + math.log(4.0)) / 3.0
    assert torch.allclose(SetCriterion.presence_loss(presence, targets), torch.tensor(expected))
    logits = torch.full((3, 10, 16, 16), -20.0)
    scores = torch.full((3, 10), -20.0)
    generator = torch.Generator().manual_seed(0)
    without = SetCriterion(num_points=64)(logits, scores, targets, generator=generator)
    assert without["presence"].item() == 0.0
    for weight in (0.0, 3.0):
        with_head = SetCriterion(num_points=64, weights=LossWeights(presence=weight))(
            logits, scores, targets, presence_logits=presence, generator=torch.Generator().manual_seed(0))
        assert with_head["presence"].item() == torch.tensor(expected).item()
        assert torch.allclose(with_head["loss"] - without["loss"], torch.tensor(weight * expected), atol=1e-5)
    # A confident right answer costs almost nothing; the same logits on the wrong phrases a lot.
    right = SetCriterion.presence_loss(torch.tensor([20.0, 20.0, -20.0]), targets)
    wrong = SetCriterion.presence_loss(torch.tensor([-20.0, -20.0, 20.0]), targets)
    assert right.item() < 1e-6 and wrong.item() > 19.0


def test_mask_iou_score_targets_are_one_to_many():
    # Two instances (columns 0-2 and 4-6 of 16x16). Queries 0 and 3 both cover instance 0
    # exactly, query 5 covers instance 1 plus one extra column (IoU 3/4), query 7 covers two of
    # instance 1's three columns (IoU 2/3), query 8 one of them (IoU 1/3): only >= 0.5 counts,
    # whichever query the matcher picked. A no-target phrase gets all zeros.
    gt = _disjoint_masks(2)
    logits = torch.full((2, 10, 16, 16), -10.0)
    for q in (0, 3):
        logits[0, q] = gt[0] * 20.0 - 10.0
    logits[0, 5, :, 4:8] = 10.0
    logits[0, 7, :, 4:6] = 10.0
    logits[0, 8, :, 4:5] = 10.0
    logits[1, 2] = gt[0] * 20.0 - 10.0
    targets = [gt, torch.zeros(0, 16, 16)]
    criterion = SetCriterion(num_points=64, score_target="mask_iou")
    match = criterion.matcher(logits, torch.zeros(2, 10), targets)
    target = criterion.score_targets(logits, targets, match)
    assert torch.nonzero(target[0]).flatten().tolist() == [0, 3, 5, 7]
    assert target[1].sum().item() == 0.0


def test_matcher_without_score_cost_follows_masks_only():
    # Query 4 has the better mask, query 1 the far higher score: with the release's cost the
    # score wins, with score cost 0 the mask does.
    gt = _disjoint_masks(1)
    logits = torch.full((10, 16, 16), -10.0)
    logits[4] = gt[0] * 20.0 - 10.0
    logits[1, :, 0:2] = 10.0  # two of the three columns
    scores = torch.full((10,), -10.0)
    scores[1] = 10.0
    assert HungarianMatcher()(logits[None], scores[None], [gt]).query_indices[0].tolist() == [1]
    assert HungarianMatcher(cost_score=0.0)(logits[None], scores[None], [gt]).query_indices[0].tolist() == [4]


def test_outside_term_by_hand():
    # 2x2 grid. Phrase 0: one instance on pixel (0, 0), query 0 matched to it; phrase 1: no target.
    target = torch.zeros(1, 2, 2)
    target[0, 0, 0] = 1.0
    targets = [target, torch.zeros(0, 2, 2)]
    match = MatchResult([torch.tensor([0]), torch.tensor([], dtype=torch.long)],
                        [torch.tensor([0]), torch.tensor([], dtype=torch.long)])
    logits = torch.full((2, 3, 2, 2), -40.0)
    logits[0, 0] = 40.0  # the matched query covers everything: not this term's business
    logits[0, 1] = 0.0  # unmatched, p = 0.5 on the 3 outside pixels: ln 2 each
    logits[0, 2, 0, 0] = 40.0  # unmatched but only on the phrase's instance: ~0
    logits[1, 0, 1, 1] = math.log(math.e - 1.0)  # no target: every pixel is outside; softplus = 1
    # Unmatched queries: (0, 1) ln 2; (0, 2) 0; (1, 0) 1/4; (1, 1) 0; (1, 2) 0 -> mean over 5.
    expected = (math.log(2) + 0.25) / 5
    assert math.isclose(SetCriterion.outside_loss(logits, targets, match).item(), expected, rel_tol=1e-5)
    # Masks off every pixel outside their phrase's instances: ~0.
    logits[0, 1] = -40.0
    logits[1, 0, 1, 1] = -40.0
    assert SetCriterion.outside_loss(logits, targets, match).item() < 1e-12
    # Enters the total only with a weight; there the matcher picks query 0, the only one whose
    # mask is the instance (query 2 is empty), so the outside term is query 1's ln 2 over 5.
    scores = torch.zeros(2, 3)
    logits[0, 0] = -40.0
    logits[0, 0, 0, 0] = 40.0
    logits[0, 2] = -40.0
    logits[0, 1] = 0.0
    plain = SetCriterion(num_points=4)(logits, scores, targets, generator=torch.Generator().manual_seed(0))
    weighted = SetCriterion(num_points=4, weights=LossWeights(outside=3.0))(
        logits, scores, targets, generator=torch.Generator().manual_seed(0))
    assert plain["outside"].item() == 0.0
    assert math.isclose(weighted["outside"].item(), math.log(2) / 5, rel_tol=1e-4)
    assert math.isclose((weighted["loss"] - plain["loss"]).item(), 3.0 * math.log(2) / 5, rel_tol=1e-4)
