"""The resumable record of a run (`<out>.partial/`): its settings, the finished batches, the lock.

A killed run, run again with the same arguments, takes the finished batches' results from here
instead of running the model (`fingerprint` says what must match)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

from instructsam_core.errors import UserError
from instructsam_ros.bags.options import AnnotateOptions
from instructsam_ros.bags.reading import bag_files

STATE_FORMAT = 1
FSYNC_INTERVAL_S = 1.0  # the record is flushed per batch (a kill loses nothing), fsynced this often


class RunState:
    """`<out>.partial/`: the run's settings (run.json), finished batches (frames.jsonl), the
    output being written (output/).

    One batch is one line, written and flushed at once, so a kill leaves at most a cut-off last
    line, which is dropped. Lines are checked against the frames the bag yields when they are
    used, so a changed bag is noticed.
    """

    def __init__(self, out: Path) -> None:
        self.dir = out.with_name(out.name + ".partial")
        self.run_file = self.dir / "run.json"
        self.frames_file = self.dir / "frames.jsonl"
        self.batches: dict[tuple[int, int], list[dict]] = {}
        self._lock_handle = None
        self._handle = None
        self._synced = 0.0

    def open(self, fingerprint: dict, overwrite: bool) -> None:
        if self.dir.exists():
            if not self.dir.is_dir() or (any(self.dir.iterdir()) and not self.run_file.is_file()):
                raise UserError(f"{self.dir} exists and is not an annotate-bag state directory; move it away")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        if self.run_file.is_file():
            try:
                previous = json.loads(self.run_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = None
            if previous != fingerprint:
                nothing_done = not self.frames_file.exists() or self.frames_file.stat().st_size == 0
                if not overwrite and not nothing_done:
                    raise UserError(f"{self.dir} holds a run of other settings ({_differences(previous, fingerprint)}); "
                                    "rerun with the same arguments to resume it, or pass --overwrite to start over")
                self.frames_file.unlink(missing_ok=True)
                self.run_file.unlink()
        if not self.run_file.is_file():
            write_atomic(self.run_file, json.dumps(fingerprint, indent=1) + "\n")
        self._load()
        self._handle = open(self.frames_file, "a", encoding="utf-8")

    def _lock(self) -> None:
        import fcntl

        self._lock_handle = open(self.dir / "lock", "w")
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"another annotate-bag run is writing {self.dir}") from None
            raise

    def _load(self) -> None:
        if not self.frames_file.exists():
            return
        lines = self.frames_file.read_bytes().split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: b"" after a final newline, else a cut-off line
        good_bytes = 0
        for number, line in enumerate(complete, 1):
            try:
                value = json.loads(line)
                key = (int(value["topic"]), int(value["first"]))
                frames = value["frames"]
                if key in self.batches or not isinstance(frames, list) or not frames:
                    raise ValueError("a repeated or empty batch")
                for frame in frames:
                    int(frame["index"]), int(frame["time"])
            except (ValueError, KeyError, TypeError) as error:
                raise UserError(f"{self.frames_file} line {number} is damaged ({error}); "
                                "pass --overwrite to start over") from None
            self.batches[key] = frames
            good_bytes += len(line) + 1
        if tail:
            # The batch being written when the run was killed: dropped, it is done again.
            with open(self.frames_file, "r+b") as handle:
                handle.truncate(good_bytes)
                os.fsync(handle.fileno())

    def append(self, topic: int, first: int, frames: list[dict]) -> None:
        line = json.dumps({"topic": topic, "first": first, "frames": frames}, separators=(",", ":"))
        self._handle.write(line + "\n")
        self._handle.flush()
        if time.monotonic() - self._synced >= FSYNC_INTERVAL_S:
            os.fsync(self._handle.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        for handle in (self._handle, self._lock_handle):
            if handle is not None:
                handle.close()
        self._handle = self._lock_handle = None

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def owned(self) -> bool:
        """This run holds the directory's lock."""
        return self._lock_handle is not None

    def holds_results(self) -> bool:
        return self.frames_file.is_file() and self.frames_file.stat().st_size > 0


def _differences(previous: dict | None, now: dict) -> str:
    if not isinstance(previous, dict):
        return "its run.json is unreadable"
    changed = [key for key in now if previous.get(key) != now[key]]
    return "differs in " + ", ".join(changed) if changed else "another format"


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _file_stats(paths: list[Path]) -> list[list]:
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def fingerprint(options: AnnotateOptions, model_dir: Path) -> dict:
    """What the per-frame results depend on; a resumed run must match it exactly."""
    model_files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors"))
    return {
        "format": STATE_FORMAT,
        "bag": str(options.bag.resolve()),
        "bag_files": _file_stats(bag_files(options.bag)),
        "topics": list(options.topics),
        "instruction": options.instruction,
        "phrases": options.phrases,
        "model": str(model_dir.resolve()),
        "model_files": _file_stats(model_files),
        "device": options.device,
        "dtype": options.dtype,
        "threshold": options.threshold,
        "max_instances": options.max_instances,
        "inference_layout": options.inference_layout,
        "start": options.start,
        "end": options.end,
        "every": options.every,
        "batch_size": options.batch_size,
        "max_pixels": options.max_pixels,
    }

