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
    distro: object = None  # rosbag2_format.Distro whose format the output has
    compression: tuple = ("none", None)  # (compression, sqlite3 mode)
    size: int = 0  # bytes of the output's storage file
    seconds: dict[str, float] = field(default_factory=dict)  # count, load, decode, model, record, finish, total

    @property
    def annotated(self) -> int:
        return sum(a for a, _ in self.per_topic.values())

    @property
    def skipped_frames(self) -> int:
        return sum(s for _, s in self.per_topic.values())

    @property
    def io_seconds(self) -> float:
        """The run's time outside the model and its loading: bag reading, decoding, writing."""
        return self.seconds.get("total", 0.0) - self.seconds.get("load", 0.0) - self.seconds.get("model", 0.0)


def _skip_reasons(summary: Summary) -> str:
    return "; ".join(f"{reason}: {count}" for reason, count in summary.skipped.most_common())


def nothing_annotated(summary: Summary, bag: Path) -> str:
    """Why a run annotated no frame (an error: an output without annotations is not what was asked)."""
    skipped = summary.skipped_frames
    if skipped:
        return (f"no frame of {bag} could be annotated: all {skipped} chosen frames were skipped "
                f"({_skip_reasons(summary)}); nothing was written")
    return f"no frame of {bag} could be annotated: none of the {summary.frames} frames its index lists was read"


def _output(summary: Summary) -> str:
    compression, mode = summary.compression
    packed = {"none": "uncompressed"}.get(compression, f"{compression} {mode} compression" if mode
                                           else f"{compression} chunks")
    distro = f"ROS 2 {summary.distro.name} format (metadata version {summary.distro.version}), " if summary.distro else ""
    return f"{summary.storage}, {packed}, {distro}{summary.size / 1e6:.1f} MB"


def format_summary(summary: Summary) -> list[str]:
    """The end-of-run report, one fact per line."""
    annotated, skipped = summary.annotated, summary.skipped_frames
    topics = ", ".join(f"{name} {a}" + (f" (+{s} skipped)" if s else "") for name, (a, s) in summary.per_topic.items())
    lines = [f"annotated {annotated} of {summary.frames} frames: {topics}"]
    if summary.resumed:
        lines.append(f"  the results of {summary.resumed} frames came from an earlier, interrupted run")
    if skipped:
        lines.append(f"skipped {skipped} frames: {_skip_reasons(summary)}")
    if summary.phrases:
        lines.append("instances: " + ", ".join(f"{phrase} {count}" for phrase, count in sorted(summary.phrases.items())))
    else:
        lines.append("instances: none")
    seconds = summary.seconds
    done_here = summary.frames - summary.resumed
    busy = seconds["total"] - seconds["load"]
    if not annotated:
        rate = "; no frames were annotated"
    else:
        rate = f"; {done_here / busy:.2f} frames/s" if done_here and busy > 0 else ""
    share = summary.io_seconds / busy if busy > 0 else 0.0
    lines.append(f"time: {seconds['total']:.1f} s (model {seconds['model']:.1f} s, loading it {seconds['load']:.1f} s, "
                 f"everything else {summary.io_seconds:.1f} s = {100 * share:.1f} %){rate}")
    lines.append(f"wrote {summary.out} ({summary.messages_copied} original + {summary.messages_added} new messages; "
                 f"{_output(summary)}) and {summary.out / COCO_NAME}")
    return lines
