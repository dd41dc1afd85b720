"""Metric definitions against values worked out by hand (see the comments for the arithmetic)."""
from __future__ import annotations

import numpy as np
import pytest

from instructsam_core.masks import encode_mask
from instructsam_core.metrics import (
    QueryEval,
    average_precision,
    coco_view,
    evaluate_queries,
    giou_ciou,
    instance_ap,
    kept_per_query,
    presence_auc,
)

H, W = 4, 20


def strip(c0: int, c1: int, rows: tuple[int, int] = (0, 1)) -> dict:
    """RLE of the block rows[0]..rows[1]-1 x columns c0..c1-1 on the H x W grid."""
    mask = np.zeros((H, W), dtype=bool)
    mask[rows[0] : rows[1], c0:c1] = True
    return encode_mask(mask)


def q(gt: list[dict], preds: list[tuple[float, dict]], ignore: dict | None = None, key=()) -> QueryEval:
    return QueryEval(H, W, gt=gt, predictions=preds, ignore=ignore, key=key)


def perfect_set() -> list[QueryEval]:
    a, b, c = strip(0, 4), strip(5, 9), strip(10, 14)
    return [
        q([a], [(0.9, a)], key=(0, 0)),
        q([b, c], [(0.8, b), (0.7, c)], key=(1, 0)),
        q([], [], key=(2, 0)),  # no target, nothing predicted
    ]


def test_predictions_equal_to_gt_score_one():
    result = evaluate_queries(perfect_set(), threshold=0.3, empty_iou=1.0)
    assert result["mAP"] == pytest.approx(1.0)
    assert result["AP50"] == pytest.approx(1.0) and result["AP75"] == pytest.approx(1.0)
    assert result["giou"] == pytest.approx(1.0) and result["ciou"] == pytest.approx(1.0)
    assert result["num_gt_instances"] == 3 and result["num_pred_instances"] == 3
    buckets = result["by_num_objects"]
    # no target, nothing predicted: AP 0.0 by the release's convention, gIoU 1 (empty vs empty)
    assert (buckets["0"]["mAP"], buckets["0"]["AP50"], buckets["0"]["AP75"]) == (0.0, 0.0, 0.0)
    assert buckets["0"]["giou"] == pytest.approx(1.0)
    assert buckets["1"]["num_gt_instances"] == 1 and buckets[">=2"]["num_gt_instances"] == 2
    assert buckets[">=2"]["mAP"] == pytest.approx(1.0)
    assert result["coco"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "fp_score, expected_ap",
    [
        # Ranking FP, TP, TP, TP with 3 GT: precision 0, 1/2, 2/3, 3/4 at recall 0, 1/3, 2/3, 1;
        # the envelope is 3/4 everywhere -> AP = 3/4.
        (0.95, 0.75),
        # Ranking TP(.9), FP(.85), TP(.8), TP(.7): envelope 1, 3/4, 3/4 over recall steps of 1/3
        # -> AP = 1/3 + 1/3 * 3/4 + 1/3 * 3/4 = 5/6.
        (0.85, 5 / 6),
        # FP after every TP: recall is already 1 -> AP stays 1.
        (0.5, 1.0),
    ],
)
def test_one_false_positive_on_a_no_target_query(fp_score, expected_ap):
    queries = perfect_set()
    queries[2] = q([], [(fp_score, strip(15, 19))], key=(2, 0))
    result = evaluate_queries(queries, threshold=0.3, empty_iou=1.0)
    assert result["AP50"] == pytest.approx(expected_ap)
    assert result["mAP"] == pytest.approx(expected_ap)  # every TP has IoU 1, so all thresholds agree
    assert result["num_pred_instances"] == 4
    # gIoU: the no-target query now scores 0 instead of 1 -> (1 + 1 + 0) / 3.
    assert result["giou"] == pytest.approx(2 / 3)
    assert result["by_num_objects"]["0"]["num_pred_instances"] == 1
    assert result["by_num_objects"]["0"]["giou"] == pytest.approx(0.0)


def test_partial_overlap_counts_only_at_low_thresholds():
    # GT 16 px (4x4 block), prediction = 12 of them: IoU 0.75 -> TP for t in .50..0.75 (6 of 10).
    gt = strip(0, 4, rows=(0, 4))
    pred = strip(0, 3, rows=(0, 4))
    result = instance_ap([q([gt], [(0.9, pred)])], threshold=0.3)
    assert result["AP50"] == pytest.approx(1.0) and result["AP75"] == pytest.approx(1.0)
    assert result["mAP"] == pytest.approx(0.6)
    assert result["AP_per_iou"]["0.80"] == 0.0
    assert coco_view([q([gt], [(0.9, pred)])], 0.3)["AP"] == pytest.approx(0.6)


def test_greedy_matching_takes_best_unused_gt():
    # g1 = cols 0-9, g2 = cols 2-11 (overlapping instances, 10 px each).
    # p1 (0.9) = cols 2-10: IoU g1 = 8/11, IoU g2 = 9/10 -> takes g2 whenever t <= 0.9.
    # p2 (0.8) = cols 2-11 = g2: IoU g2 = 1, IoU g1 = 8/12 = .667 -> g1 for t <= .65, else FP
    # (g2 is used), except at t = .95 where p1 missed and p2 takes g2.
    # AP: t .50-.65 TP,TP -> 1; t .70-.90 TP,FP -> 1/2; t .95 FP,TP -> 1/2 * 1/2 = 1/4.
    g1, g2 = strip(0, 10), strip(2, 12)
    p1, p2 = strip(2, 11), strip(2, 12)
    result = instance_ap([q([g1, g2], [(0.8, p2), (0.9, p1)])], threshold=0.0)
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP75"] == pytest.approx(0.5)
    assert result["AP_per_iou"]["0.95"] == pytest.approx(0.25)
    assert result["mAP"] == pytest.approx((4 * 1 + 5 * 0.5 + 0.25) / 10)


def test_score_ties_keep_input_order():
    # Same score on a TP (query A) and on an FP (no-target query B); one GT in total.
    a = strip(0, 4)
    tp_first = [q([a], [(0.5, a)]), q([], [(0.5, strip(6, 8))])]
    fp_first = [q([], [(0.5, strip(6, 8))]), q([a], [(0.5, a)])]
    assert instance_ap(tp_first, 0.3)["AP50"] == pytest.approx(1.0)  # TP then FP
    assert instance_ap(fp_first, 0.3)["AP50"] == pytest.approx(0.5)  # precision 1/2 at recall 1


def test_threshold_is_strict_and_filters_everything():
    a = strip(0, 4)
    queries = [q([a], [(0.3, a), (0.31, strip(10, 12))])]
    result = evaluate_queries(queries, threshold=0.3, empty_iou=1.0)
    # Only the 0.31 prediction (no overlap) is kept: one FP, one missed GT.
    assert result["num_pred_instances"] == 1
    assert result["mAP"] == 0.0 and result["giou"] == 0.0


def test_empty_predictions_and_empty_ground_truth():
    a, b = strip(0, 4), strip(5, 9)
    no_preds = evaluate_queries([q([a, b], [])], threshold=0.3, empty_iou=1.0)
    assert no_preds["mAP"] == 0.0 and no_preds["giou"] == 0.0 and no_preds["num_pred_instances"] == 0
    assert no_preds["coco"]["AP"] == 0.0
    no_gt = evaluate_queries([q([], []), q([], [])], threshold=0.3, empty_iou=1.0)
    # no GT at all: the release writes AP 0.0; COCOeval's view keeps COCO's "undefined"
    assert (no_gt["mAP"], no_gt["AP50"], no_gt["AP75"]) == (0.0, 0.0, 0.0) and no_gt["coco"]["AP"] is None
    assert no_gt["giou"] == 1.0 and no_gt["ciou"] == 1.0
    # ReasonSeg's rule: empty vs empty scores 0.
    assert giou_ciou([q([], [])], 0.3, empty_iou=0.0) == (0.0, 0.0)
    assert evaluate_queries([], 0.3, 1.0)["giou"] is None
    assert average_precision(np.zeros(0, bool), 2) == 0.0


def test_ciou_pools_pixels_and_giou_averages_queries():
    # q1: GT 4 px, prediction covers 2 of them -> inter 2, union 4 (IoU 1/2).
    # q2: GT 6 px, prediction identical      -> inter 6, union 6 (IoU 1).
    q1 = q([strip(0, 4)], [(0.9, strip(0, 2))])
    q2 = q([strip(0, 6)], [(0.9, strip(0, 6))])
    giou, ciou = giou_ciou([q1, q2], 0.3, empty_iou=1.0)
    assert giou == pytest.approx(0.75)  # (1/2 + 1) / 2
    assert ciou == pytest.approx(8 / 10)  # (2 + 6) / (4 + 6)


def test_union_of_kept_masks_for_giou():
    # Two predicted halves together cover the GT exactly -> IoU 1 although neither alone does.
    gt = strip(0, 8)
    query = q([gt], [(0.9, strip(0, 4)), (0.8, strip(4, 8)), (0.1, strip(10, 20))])
    giou, _ = giou_ciou([query], 0.3, 1.0)
    assert giou == pytest.approx(1.0)
    giou_all, _ = giou_ciou([query], 0.0, 1.0)  # the 0.1 prediction adds 10 px to the union
    assert giou_all == pytest.approx(8 / 18)


def test_ignore_mask_removes_pixels_from_both():
    # GT 4 px (cols 0-3); prediction 6 px (cols 0-5); cols 4-5 ignored -> IoU 1 instead of 4/6.
    gt = strip(0, 4)
    pred = strip(0, 6)
    ignore = strip(4, 6)
    with_ignore = giou_ciou([q([gt], [(0.9, pred)], ignore=ignore)], 0.3, empty_iou=0.0)
    without = giou_ciou([q([gt], [(0.9, pred)])], 0.3, empty_iou=0.0)
    assert with_ignore[0] == pytest.approx(1.0)
    assert without[0] == pytest.approx(4 / 6)
    # Ignore covering all GT and prediction pixels leaves empty vs empty -> the suite's rule.
    everything = strip(0, 20, rows=(0, 4))
    assert giou_ciou([q([gt], [(0.9, pred)], ignore=everything)], 0.3, empty_iou=0.0)[0] == 0.0


def test_bad_masks_name_the_query():
    with pytest.raises(ValueError, match=r"query \(3, 1\)"):
        QueryEval(H, W, gt=[{"size": [H, W + 1], "counts": [H * (W + 1)]}], key=(3, 1))
    with pytest.raises(ValueError, match="not finite"):
        QueryEval(H, W, predictions=[(float("nan"), strip(0, 1))])


def test_presence_auc_and_kept_instances_by_hand():
    a = q([strip(0, 2)], [(0.9, strip(0, 2)), (0.4, strip(5, 7))])  # present, top 0.9, keeps 2 at 0.3
    b = q([strip(0, 2)], [(0.2, strip(0, 2))])  # present, top 0.2, keeps 0
    c = q([], [(0.5, strip(0, 2))])  # absent, top 0.5, keeps 1
    d = q([], [])  # absent, no prediction: top 0, keeps 0
    # pairs (present, absent): (a,c) win, (a,d) win, (b,c) loss, (b,d) win -> 3 / 4
    assert presence_auc([a, b, c, d]) == 0.75
    e = q([strip(0, 2)], [(0.5, strip(0, 2))])  # ties c: counts half
    assert presence_auc([e, c]) == 0.5 and presence_auc([e, d]) == 1.0
    assert presence_auc([a, b]) is None and presence_auc([c, d]) is None
    assert kept_per_query([a, b, c, d], 0.3) == {"0": 2, "1": 1, "2": 1, ">=3": 0}
    many = q([strip(0, 2)], [(0.8, strip(0, 2))] * 4)
    assert kept_per_query([many], 0.3) == {"0": 0, "1": 0, "2": 0, ">=3": 1}
    diagnostics = evaluate_queries([a, b, c, d], 0.3, 1.0, coco=False)["diagnostics"]
    assert diagnostics == {"presence_auc": 0.75, "kept_per_query": {"0": 2, "1": 1, "2": 1, ">=3": 0}}
