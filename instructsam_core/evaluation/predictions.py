"""`predictions.jsonl`: the raw model output of an evaluation run, written so that it can resume.

One line per predicted instance, before any score threshold:
    {"record": i, "annotation": j, "score": s, "segmentation": {"size": [h, w], "counts": "..."}}
and, after the instances of each query, one marker line
    {"record": i, "annotation": j, "done": true, "num_instances": k}
so that a resumed run knows which queries finished, including those with no instance. Each
query's lines are written in one go, flushed and fsynced. Files from other tools (no markers)
score the same way: a query without lines simply has no prediction.

A crash can leave a truncated last line or instance lines of a query without its marker; on
resume both are dropped (the file is rewritten atomically), so no line is ever duplicated.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from instructsam_core.errors import UserError

PREDICTIONS_NAME = "predictions.jsonl"


def shard_file_name(shard: int, num_shards: int) -> str:
    return PREDICTIONS_NAME if num_shards == 1 else f"predictions.shard{shard:03d}-of-{num_shards:03d}.jsonl"


@dataclass
class PredictionLine:
    record: int
    annotation: int
    score: float
    segmentation: dict


@dataclass
class PredictionsFile:
    """What a predictions file holds: instance lines (file order) and finished queries."""

    path: Path
    instances: list[PredictionLine] = field(default_factory=list)
    done: set[tuple[int, int]] = field(default_factory=set)
    has_markers: bool = False


def _instance_line(record: int, annotation: int, score: float, segmentation: dict) -> str:
    return json.dumps(
        {"record": record, "annotation": annotation, "score": round(float(score), 6), "segmentation": segmentation},
        separators=(",", ":"),
    )


def _marker_line(record: int, annotation: int, count: int) -> str:
    return json.dumps(
        {"record": record, "annotation": annotation, "done": True, "num_instances": count}, separators=(",", ":")
    )


def _parse(line: str, path: Path, number: int) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: line {number} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: line {number} is not a JSON object")
    for key in ("record", "annotation"):
        if not isinstance(value.get(key), int) or isinstance(value.get(key), bool) or value[key] < 0:
            raise UserError(f"{path}: line {number}: {key!r} must be a non-negative integer")
    if value.get("done") is True:
        return value
    score = value.get("score")
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        raise UserError(f"{path}: line {number}: 'score' must be a number")
    seg = value.get("segmentation")
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        raise UserError(f"{path}: line {number}: 'segmentation' must be a COCO RLE with size and counts")
    return value


def read_predictions(path: str | Path, tolerate_truncated_tail: bool = False) -> PredictionsFile:
    """Parse a predictions file. With `tolerate_truncated_tail`, an unparsable last line that
    lacks its newline (a write cut short) is ignored instead of being an error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"predictions file {path} does not exist") from None
    except OSError as error:
        raise UserError(f"predictions file {path} cannot be read: {error.strerror}") from None
    result = PredictionsFile(path)
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        is_tail = number == len(lines)  # no newline after it
        try:
            value = _parse(raw.decode("utf-8"), path, number)
        except (UserError, UnicodeDecodeError):
            if tolerate_truncated_tail and is_tail:
                break
            raise
        if value.get("done") is True:
            result.has_markers = True
            result.done.add((value["record"], value["annotation"]))
        else:
            result.instances.append(
                PredictionLine(value["record"], value["annotation"], float(value["score"]), value["segmentation"])
            )
    return result


class PredictionsWriter:
    """Appends finished queries to a predictions file, after cleaning up an interrupted run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.done: set[tuple[int, int]] = set()
        if self.path.exists():
            self._recover()
        self._handle = open(self.path, "a", encoding="utf-8")

    def _recover(self) -> None:
        existing = read_predictions(self.path, tolerate_truncated_tail=True)
        self.done = set(existing.done)
        complete = [p for p in existing.instances if (p.record, p.annotation) in self.done]
        raw = self.path.read_bytes()
        clean = (not raw or raw.endswith(b"\n")) and raw.count(b"\n") == len(complete) + len(self.done)
        if clean:
            return  # no truncated tail and no instance lines of an unfinished query
        # Rewrite with finished queries only, in the order they finished, then swap atomically.
        by_query: dict[tuple[int, int], list[PredictionLine]] = {}
        for p in complete:
            by_query.setdefault((p.record, p.annotation), []).append(p)
        lines: list[str] = []
        for key in dict.fromkeys(_marker_order(self.path)):
            group = by_query.get(key, [])
            lines.extend(_instance_line(p.record, p.annotation, p.score, p.segmentation) for p in group)
            lines.append(_marker_line(key[0], key[1], len(group)))
        temporary = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def write_query(self, record: int, annotation: int, instances: Sequence[tuple[float, dict]]) -> None:
        """Write a finished query (its instances, then its marker) durably."""
        text = "".join(_instance_line(record, annotation, s, seg) + "\n" for s, seg in instances)
        text += _marker_line(record, annotation, len(instances)) + "\n"
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.done.add((record, annotation))

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "PredictionsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _marker_order(path: Path) -> list[tuple[int, int]]:
    """Queries in the order their markers appear (used when rewriting after a crash)."""
    order = []
    for raw in path.read_bytes().split(b"\n"):
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(value, dict) and value.get("done") is True:
            order.append((value["record"], value["annotation"]))
    return order


def merge_prediction_files(paths: Iterable[Path], out_path: Path) -> PredictionsFile:
    """Concatenate shard files into one, queries sorted by (record, annotation), atomically."""
    instances: dict[tuple[int, int], list[PredictionLine]] = {}
    done: set[tuple[int, int]] = set()
    for path in paths:
        part = read_predictions(path)
        for p in part.instances:
            instances.setdefault((p.record, p.annotation), []).append(p)
        overlap = done & part.done
        if overlap:
            raise UserError(f"{path}: queries {sorted(overlap)[:3]} also appear in another shard")
        done |= part.done
    lines = []
    for key in sorted(done | set(instances)):
        group = instances.get(key, [])
        lines.extend(_instance_line(p.record, p.annotation, p.score, p.segmentation) for p in group)
        if key in done:
            lines.append(_marker_line(key[0], key[1], len(group)))
    temporary = out_path.with_name(f"{out_path.name}.tmp{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, out_path)
    return read_predictions(out_path)
