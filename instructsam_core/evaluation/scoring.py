"""Scoring: ground truth from a suite + a predictions file -> metrics.json and metrics.md."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from instructsam_core.errors import UserError
from instructsam_core.evaluation.predictions import PredictionsFile
from instructsam_core.evaluation.suites import EvalQuery, SuiteData
from instructsam_core.masks import MaskFormatError
from instructsam_core.metrics import QueryEval, evaluate_queries, query_iou

METRIC_KEYS = ("giou", "ciou", "mAP", "AP50", "AP75", "num_gt_instances", "num_pred_instances")


def build_query_evals(data: SuiteData, predictions: PredictionsFile, strict: bool = True) -> list[QueryEval]:
    """Attach predictions to the suite's queries; predictions for unknown queries are an error
    (they mean the file belongs to another data file) unless `strict` is False."""
    by_key: dict[tuple[int, int], list[tuple[float, dict]]] = {}
    for line in predictions.instances:
        by_key.setdefault((line.record, line.annotation), []).append((line.score, line.segmentation))
    known = {q.key for q in data.queries}
    unknown = sorted(set(by_key) - known)
    skipped = {index for index, _ in data.skipped}
    unknown = [k for k in unknown if k[0] not in skipped and not (data.limited and k[0] >= data.num_records)]
    if unknown and strict:
        raise UserError(
            f"{predictions.path}: predictions for {len(unknown)} queries not in {data.path} "
            f"(first: record {unknown[0][0]}, annotation {unknown[0][1]}); wrong --data or --limit?"
        )
    result = []
    for query in data.queries:
        try:
            result.append(
                QueryEval(
                    query.height,
                    query.width,
                    gt=list(query.gt),
                    predictions=by_key.get(query.key, []),
                    ignore=query.ignore,
                    key=query.key,
                )
            )
        except MaskFormatError as error:
            raise UserError(f"{predictions.path}: {error}") from None
    return result


def score(
    data: SuiteData,
    predictions: PredictionsFile,
    threshold: float | None = None,
    queries: Sequence[EvalQuery] | None = None,
) -> tuple[dict, list[QueryEval]]:
    """All metrics for a suite. `queries` restricts scoring to a subset (e.g. a limited run)."""
    suite = data.suite
    threshold = suite.threshold if threshold is None else float(threshold)
    if not 0.0 <= threshold < 1.0:
        raise UserError(f"--threshold must be in [0, 1), got {threshold}")
    evals = build_query_evals(data, predictions)
    if queries is not None:
        wanted = {q.key for q in queries}
        pairs = [(q, e) for q, e in zip(data.queries, evals) if q.key in wanted]
    else:
        pairs = list(zip(data.queries, evals))
    subset = [e for _, e in pairs]
    metrics = {"suite": suite.name, "data": str(data.path), **evaluate_queries(subset, threshold, suite.empty_iou)}
    metrics["num_records"] = len({q.record for q, _ in pairs})
    metrics["skipped_records"] = len(data.skipped)
    if predictions.has_markers:
        missing = sum(1 for q, _ in pairs if q.key not in predictions.done)
        metrics["unfinished_queries"] = missing
    groups = sorted({q.group for q, _ in pairs if q.group is not None})
    if groups:
        metrics["splits"] = {
            g: evaluate_queries([e for q, e in pairs if q.group == g], threshold, suite.empty_iou, coco=False)
            for g in groups
        }
    if suite.name == "roborefit":
        metrics["miou"] = metrics["giou"]
    return metrics, subset


def per_query_ious(evals: Sequence[QueryEval], threshold: float, empty_iou: float) -> list[float]:
    return [query_iou(e, threshold, empty_iou) for e in evals]


def _fmt(value: object, percent: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{100 * float(value):.1f}" if percent else f"{float(value):.3f}"


def metrics_markdown(metrics: dict) -> str:
    """A human-readable table (percentages) of the metrics.json content."""
    header = "| subset | queries | gIoU | cIoU | mAP | AP50 | AP75 | #GT | #pred |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"

    def row(name: str, m: dict) -> str:
        cells = [name, str(m.get("num_queries", "—"))]
        cells += [_fmt(m.get(k)) for k in ("giou", "ciou", "mAP", "AP50", "AP75")]
        cells += [str(m.get("num_gt_instances", "—")), str(m.get("num_pred_instances", "—"))]
        return "| " + " | ".join(cells) + " |"

    lines = [
        f"# {metrics['suite']} — {metrics.get('data', '')}",
        "",
        f"Score threshold {metrics['threshold']}; empty vs empty counts {metrics['empty_iou']:g} in gIoU. "
        "Values in percent.",
        "",
        header,
        rule,
        row("all", metrics),
    ]
    for bucket, m in metrics["by_num_objects"].items():
        lines.append(row(f"GT count {bucket}", m))
    for name, m in metrics.get("splits", {}).items():
        lines.append(row(f"split {name}", m))
    coco = metrics.get("coco")
    if coco:
        lines += [
            "",
            "COCOeval (segm, 101-point interpolation): "
            f"AP {_fmt(coco['AP'])}, AP50 {_fmt(coco['AP50'])}, AP75 {_fmt(coco['AP75'])}",
        ]
    if "miou" in metrics:
        lines += ["", f"Mean IoU (RoboRefIt): {_fmt(metrics['miou'])}"]
    groups = [metrics, *metrics["by_num_objects"].values(), *metrics.get("splits", {}).values()]
    if any(m.get("num_queries") and not m.get("num_gt_instances") for m in groups):
        lines += ["", "AP of a group without targets (GT count 0) is 0 by the release's convention: with no "
                  "ground-truth instance recall is undefined, no prediction can be a true positive and every "
                  "kept one is a false positive, so the release writes 0.0 (and so does metrics.json, to "
                  "compare with its files). How well such queries are answered shows in their gIoU (an empty "
                  "answer scores the empty-vs-empty value) and in #pred (false positives)."]
    diagnostics = metrics.get("diagnostics")
    if diagnostics:
        kept = ", ".join(f"{n}: {c}" for n, c in diagnostics["kept_per_query"].items())
        lines += ["", f"Diagnostics: top score vs \"has a target\" ROC-AUC {_fmt(diagnostics['presence_auc'], False)}; "
                  f"queries keeping 0/1/2/3+ instances: {kept}."]
    notes = []
    if metrics.get("skipped_records"):
        notes.append(f"{metrics['skipped_records']} malformed records skipped")
    if metrics.get("unfinished_queries"):
        notes.append(f"{metrics['unfinished_queries']} queries have no finished prediction (incomplete run)")
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def write_metrics(out_dir: Path, metrics: dict) -> None:
    """metrics.json and metrics.md, each written atomically."""
    for name, text in (
        ("metrics.json", json.dumps(metrics, indent=2) + "\n"),
        ("metrics.md", metrics_markdown(metrics)),
    ):
        temporary = out_dir / f"{name}.tmp{os.getpid()}"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out_dir / name)
