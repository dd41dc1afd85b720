"""What an annotate-bag run did: counted while it runs, reported one fact a line at its end."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

COCO_NAME = "coco.json"


@dataclass
class Summary:
    """What a run did, for the end-of-run report and the benchmark."""

    out: Path
    storage: str
    frames: int = 0  # frames chosen
    resumed: int = 0  # of those, results read from an earlier run's record
    per_topic: dict[str, list[int]] = field(default_factory=dict)  # topic -> [annotated, skipped]
    skipped: Counter = field(default_factory=Counter)  # reason -> frames
    phrases: Counter = field(default_factory=Counter)  # phrase -> instances
    messages_copied: int = 0
    messages_added: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # count, load, decode, model, record, finish, total

    @property
    def io_seconds(self) -> float:
        """The run's time outside the model and its loading: bag reading, decoding, writing."""
        return self.seconds.get("total", 0.0) - self.seconds.get("load", 0.0) - self.seconds.get("model", 0.0)


def format_summary(summary: Summary) -> list[str]:
    """The end-of-run report, one fact per line."""
    annotated = sum(a for a, _ in summary.per_topic.values())
    skipped = sum(s for _, s in summary.per_topic.values())
    topics = ", ".join(f"{name} {a}" + (f" (+{s} skipped)" if s else "") for name, (a, s) in summary.per_topic.items())
    lines = [f"annotated {annotated} of {summary.frames} frames: {topics}"]
    if summary.resumed:
        lines.append(f"  the results of {summary.resumed} frames came from an earlier, interrupted run")
    if skipped:
        reasons = "; ".join(f"{reason}: {count}" for reason, count in summary.skipped.most_common())
        lines.append(f"skipped {skipped} frames: {reasons}")
    if summary.phrases:
        lines.append("instances: " + ", ".join(f"{phrase} {count}" for phrase, count in sorted(summary.phrases.items())))
    else:
        lines.append("instances: none")
    seconds = summary.seconds
    done_here = summary.frames - summary.resumed
    rate = f"; {done_here / (seconds['total'] - seconds['load']):.2f} frames/s" if done_here else ""
    share = summary.io_seconds / (seconds["total"] - seconds["load"]) if seconds["total"] > seconds["load"] else 0.0
    lines.append(f"time: {seconds['total']:.1f} s (model {seconds['model']:.1f} s, loading it {seconds['load']:.1f} s, "
                 f"everything else {summary.io_seconds:.1f} s = {100 * share:.1f} %){rate}")
    lines.append(f"wrote {summary.out} ({summary.storage}: {summary.messages_copied} original + "
                 f"{summary.messages_added} new messages) and {summary.out / COCO_NAME}")
    return lines
