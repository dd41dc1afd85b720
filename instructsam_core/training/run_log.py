"""A run's log: OUTPUT/log.jsonl (one line per `log_every` steps) and its loss curve.

Each line holds the step, the epoch, every loss term (unweighted, averaged over the steps since
the previous line and over processes), the learning rates and the elapsed seconds. A kill can cut
the last line off; readers skip such a line and a resume rewrites the log up to its step.
"""
from __future__ import annotations

import json
from pathlib import Path

LOSS_KEYS = ("loss", "text", "mask_bce", "mask_dice", "score", "box_l1", "box_giou", "semantic", "presence", "outside",
             "region")
LOG_FILE = "log.jsonl"


def read_log(path: Path) -> list[dict]:
    """The entries of log.jsonl; a line that is not a whole JSON object (the last one, cut off by
    a kill during its write) is left out."""
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append(entry)
    return entries


def append_log(output: Path, entry: dict) -> None:
    with open(output / LOG_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def truncate_log(output: Path, step: int) -> None:
    """Drop log lines past the resumed step (they were written after the last checkpoint) and a
    last line cut off by a kill."""
    log = output / LOG_FILE
    if not log.is_file():
        return
    kept = [json.dumps(entry) for entry in read_log(log) if entry["step"] <= step]
    log.write_text("".join(line + "\n" for line in kept))


def plot_loss_curve(log_path: Path, png_path: Path) -> None:
    """Total and per-term loss against step, from log.jsonl."""
    if not log_path.is_file():
        return
    entries = read_log(log_path)
    if not entries:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in entries]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(steps, [e["loss"] for e in entries], label="total")
    axes[0].set_title("total loss")
    terms = [k for k in LOSS_KEYS[1:] if any(e.get(k, 0.0) != 0.0 for e in entries)]
    for key in terms:
        axes[1].plot(steps, [e[key] for e in entries], label=key)
    axes[1].set_title("loss terms (unweighted)")
    for axis, keys in ((axes[0], LOSS_KEYS[:1]), (axes[1], terms)):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if all(e[k] > 0 for e in entries for k in keys):
            axis.set_yscale("log")
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
