"""The release's evaluation metrics, independent of any model (reference-design.md, "Metrics").

Unit of evaluation: a *query* = one instruction on one image, with its ground-truth instance
masks (none for a no-target query), optional ignore mask, and the predicted instances with
scores. Everything is computed from COCO RLEs through pycocotools.

- gIoU: mean over queries of IoU(union of kept predicted masks, union of GT masks). A prediction
  is kept when score > threshold. Both unions empty scores `empty_iou` (1 for Inst2Seg/gRefCOCO,
  0 for ReasonSeg). Pixels of an ignore mask are removed from both unions first.
- cIoU: total intersection / total union over all queries (same kept masks, same ignore rule).
- Instance AP: kept predictions of the whole data set sorted by score (stable: ties keep input
  order). Each is matched to the unused GT instance *of its own query* with the highest IoU
  >= t; a match is a true positive, anything else (including every prediction on a no-target
  query) a false positive. AP is the area under the precision envelope over recall (all-point
  interpolation), with recall normalised by the data set's number of GT instances. mAP averages
  t = 0.50, 0.55, ..., 0.95; AP50 and AP75 are single thresholds.
- Everything again per bucket of GT count: "0", "1", ">=2" (queries with that many instances).
  With no GT instance (the "0" bucket, or a data set of no-target queries only) recall is
  undefined; the release writes AP = 0.0 there (every kept prediction is a false positive and
  no true positive can exist), and so do we, so that files compare with the release's. The
  COCOeval view keeps COCO's convention (None: no GT, no AP).
- Diagnostics (not release metrics; they say *why* the figures are what they are): ROC-AUC of a
  query's top score for "has a target" vs "has none" (does the score know presence, whatever the
  threshold?), and how many instances each query keeps (does the model ever return two?).
- A second view through pycocotools' COCOeval (segm, one class, one "image" per query): AP,
  AP50, AP75 with COCO's 101-point interpolation and max 100 detections per query.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as coco_mask
from scipy.stats import mannwhitneyu

from instructsam_core.masks import MaskFormatError, rle_to_mask, validate_rle

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
BUCKETS: tuple[str, ...] = ("0", "1", ">=2")


@dataclass
class QueryEval:
    """One query: GT instance RLEs, (score, RLE) predictions, optional ignore RLE.

    RLEs may use list or string counts; they are validated and compressed on construction so
    that a bad mask fails here, with the query's key in the message.
    """

    height: int
    width: int
    gt: list[dict] = field(default_factory=list)
    predictions: list[tuple[float, dict]] = field(default_factory=list)
    ignore: dict | None = None
    key: tuple = ()

    def __post_init__(self) -> None:
        try:
            self.gt = [validate_rle(r, self.height, self.width) for r in self.gt]
            self.predictions = [
                (float(s), validate_rle(r, self.height, self.width)) for s, r in self.predictions
            ]
            if self.ignore is not None:
                self.ignore = validate_rle(self.ignore, self.height, self.width)
        except MaskFormatError as error:
            raise MaskFormatError(f"query {self.key}: {error}") from None
        for score, _ in self.predictions:
            if not np.isfinite(score):
                raise MaskFormatError(f"query {self.key}: prediction score {score} is not finite")

    @property
    def bucket(self) -> str:
        n = len(self.gt)
        return "0" if n == 0 else "1" if n == 1 else ">=2"

    def kept(self, threshold: float) -> list[tuple[float, dict]]:
        return [(s, r) for s, r in self.predictions if s > threshold]


# ----------------------------------------------------------------------------- gIoU / cIoU


def _union(rles: Sequence[dict], height: int, width: int) -> dict | None:
    if not rles:
        return None
    if len(rles) == 1:
        return rles[0]
    return coco_mask.merge(list(rles), intersect=False)


def query_intersection_union(query: QueryEval, threshold: float) -> tuple[int, int]:
    """(intersection, union) pixel counts of the kept-prediction union and the GT union."""
    pred = _union([r for _, r in query.kept(threshold)], query.height, query.width)
    gt = _union(query.gt, query.height, query.width)
    if query.ignore is not None:
        keep = ~rle_to_mask(query.ignore)
        p = rle_to_mask(pred) & keep if pred is not None else np.zeros((query.height, query.width), bool)
        g = rle_to_mask(gt) & keep if gt is not None else np.zeros((query.height, query.width), bool)
        return int((p & g).sum()), int((p | g).sum())
    if pred is None and gt is None:
        return 0, 0
    if pred is None:
        return 0, int(coco_mask.area(gt))
    if gt is None:
        return 0, int(coco_mask.area(pred))
    inter = int(coco_mask.area(coco_mask.merge([pred, gt], intersect=True)))
    union = int(coco_mask.area(coco_mask.merge([pred, gt], intersect=False)))
    return inter, union


def query_iou(query: QueryEval, threshold: float, empty_iou: float) -> float:
    """The per-query term of gIoU (empty vs empty -> `empty_iou`)."""
    inter, union = query_intersection_union(query, threshold)
    return float(empty_iou) if union == 0 else inter / union


def giou_ciou(queries: Sequence[QueryEval], threshold: float, empty_iou: float) -> tuple[float | None, float | None]:
    """(gIoU, cIoU) over the queries; None when there are no queries. cIoU with a total union
    of zero (every query empty vs empty) takes `empty_iou` like a single query would."""
    if not queries:
        return None, None
    ious, inters, unions = [], 0, 0
    for query in queries:
        inter, union = query_intersection_union(query, threshold)
        ious.append(float(empty_iou) if union == 0 else inter / union)
        inters += inter
        unions += union
    ciou = float(empty_iou) if unions == 0 else inters / unions
    return float(np.mean(ious)), float(ciou)


# ----------------------------------------------------------------------------- instance AP


def _query_iou_matrix(query: QueryEval, kept: list[tuple[float, dict]]) -> np.ndarray:
    if not kept or not query.gt:
        return np.zeros((len(kept), len(query.gt)))
    return np.asarray(
        coco_mask.iou([r for _, r in kept], query.gt, [0] * len(query.gt)), dtype=np.float64
    ).reshape(len(kept), len(query.gt))


def _match_query(ious: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy matching in score order; returns a TP flag per prediction (original order)."""
    used = np.zeros(ious.shape[1], dtype=bool)
    tp = np.zeros(ious.shape[0], dtype=bool)
    for p in order:
        candidates = np.flatnonzero(~used & (ious[p] >= threshold))
        if candidates.size:
            best = candidates[int(np.argmax(ious[p, candidates]))]  # equal IoUs: lowest GT index
            used[best] = True
            tp[p] = True
    return tp


def average_precision(tp_sorted: np.ndarray, num_gt: int) -> float:
    """All-point AP from TP flags already in score order (0.0 when there is no GT, as the release)."""
    if num_gt == 0:
        return 0.0
    if tp_sorted.size == 0:
        return 0.0
    tp_cum = np.cumsum(tp_sorted)
    fp_cum = np.cumsum(~tp_sorted)
    recall = tp_cum / num_gt
    precision = tp_cum / (tp_cum + fp_cum)
    # Envelope: precision at recall r = max precision at any recall >= r.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    previous = np.concatenate([[0.0], recall[:-1]])
    return float(np.sum((recall - previous) * envelope))


def instance_ap(queries: Sequence[QueryEval], threshold: float) -> dict:
    """mAP, AP50, AP75 (and AP per IoU threshold) plus #GT/#pred over the given queries."""
    scores: list[np.ndarray] = []
    tps: list[np.ndarray] = []  # [T, n] per query
    num_gt = 0
    for query in queries:
        kept = query.kept(threshold)
        num_gt += len(query.gt)
        if not kept:
            continue
        s = np.array([sc for sc, _ in kept], dtype=np.float64)
        order = np.argsort(-s, kind="stable")
        ious = _query_iou_matrix(query, kept)
        tps.append(np.stack([_match_query(ious, order, t) for t in IOU_THRESHOLDS]))
        scores.append(s)
    num_pred = int(sum(len(s) for s in scores))
    if scores:
        all_scores = np.concatenate(scores)
        all_tp = np.concatenate(tps, axis=1)
        order = np.argsort(-all_scores, kind="stable")  # ties: input order
        all_tp = all_tp[:, order]
    else:
        all_tp = np.zeros((len(IOU_THRESHOLDS), 0), dtype=bool)
    per_t = [average_precision(all_tp[i], num_gt) for i in range(len(IOU_THRESHOLDS))]
    m_ap = float(np.mean(per_t))
    ap50 = per_t[IOU_THRESHOLDS.index(0.5)]
    ap75 = per_t[IOU_THRESHOLDS.index(0.75)]
    return {
        "mAP": m_ap,
        "AP50": ap50,
        "AP75": ap75,
        "AP_per_iou": {f"{t:.2f}": v for t, v in zip(IOU_THRESHOLDS, per_t)},
        "num_gt_instances": int(num_gt),
        "num_pred_instances": num_pred,
    }


# ----------------------------------------------------------------------------- COCOeval view


def coco_view(queries: Sequence[QueryEval], threshold: float) -> dict:
    """COCO-style segm AP through pycocotools COCOeval (None values when there is no GT)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, gts, dts = [], [], []
    for image_id, query in enumerate(queries, start=1):
        images.append({"id": image_id, "height": query.height, "width": query.width})
        for rle in query.gt:
            gts.append(
                {
                    "id": len(gts) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(coco_mask.area(rle)),
                    "bbox": [float(v) for v in coco_mask.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
        for score, rle in query.kept(threshold):
            dts.append(
                {
                    "id": len(dts) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(coco_mask.area(rle)),
                    "bbox": [float(v) for v in coco_mask.toBbox(rle)],
                    "score": float(score),
                    "iscrowd": 0,
                }
            )
    empty = {"AP": None, "AP50": None, "AP75": None, "num_gt_instances": len(gts), "num_pred_instances": len(dts)}
    if not gts:
        return empty
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "target"}]}
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {"images": images, "annotations": dts, "categories": [{"id": 1, "name": "target"}]}
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.maxDets = [1, 10, 100]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [None if v < 0 else float(v) for v in evaluator.stats[:3]]
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2], "num_gt_instances": len(gts), "num_pred_instances": len(dts)}


# ----------------------------------------------------------------------------- everything


def _summary(queries: Sequence[QueryEval], threshold: float, empty_iou: float) -> dict:
    giou, ciou = giou_ciou(queries, threshold, empty_iou)
    ap = instance_ap(queries, threshold)
    return {"num_queries": len(queries), "giou": giou, "ciou": ciou, **ap}


def presence_auc(queries: Sequence[QueryEval]) -> float | None:
    """ROC-AUC of each query's top score (0 without predictions) for "has a GT instance" against
    "has none": the chance that a random query with a target outscores a random one without
    (ties count half; Mann-Whitney U / (n_present * n_absent)). None without both kinds."""
    top = np.array([max((s for s, _ in q.predictions), default=0.0) for q in queries], dtype=np.float64)
    present = np.array([bool(q.gt) for q in queries])
    if present.all() or not present.any():
        return None
    positives, negatives = top[present], top[~present]
    u_statistic = mannwhitneyu(positives, negatives, alternative="two-sided").statistic
    return float(u_statistic / (positives.size * negatives.size))


def kept_per_query(queries: Sequence[QueryEval], threshold: float) -> dict[str, int]:
    """How many queries keep 0, 1, 2 and 3 or more instances (score > threshold)."""
    counts = {"0": 0, "1": 0, "2": 0, ">=3": 0}
    for query in queries:
        kept = sum(1 for s, _ in query.predictions if s > threshold)
        counts[str(kept) if kept < 3 else ">=3"] += 1
    return counts


def evaluate_queries(
    queries: Sequence[QueryEval], threshold: float, empty_iou: float, coco: bool = True
) -> dict:
    """All metrics: overall, `by_num_objects` buckets, and (optionally) the COCOeval view."""
    result = {"threshold": float(threshold), "empty_iou": float(empty_iou), **_summary(queries, threshold, empty_iou)}
    result["by_num_objects"] = {
        bucket: _summary([q for q in queries if q.bucket == bucket], threshold, empty_iou) for bucket in BUCKETS
    }
    result["diagnostics"] = {"presence_auc": presence_auc(queries),
                             "kept_per_query": kept_per_query(queries, threshold)}
    if coco:
        result["coco"] = coco_view(queries, threshold)
    return result
