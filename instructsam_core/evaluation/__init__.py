"""Benchmark evaluation: suite readers, resumable/shardable model runs, scoring, reports.

Modules: `suites` (data files -> queries, prompts, thresholds), `predictions` (the
predictions.jsonl format, crash recovery, shard merge), `runner` (running a Predictor over
queries, sharding, resume checks), `scoring` (metrics.json / metrics.md from
`instructsam_core.metrics`), `overlays` (pictures of the best and worst queries).
"""
from instructsam_core.evaluation.suites import SUITES, EvalQuery, SuiteData, read_suite

__all__ = ["SUITES", "EvalQuery", "SuiteData", "read_suite"]
