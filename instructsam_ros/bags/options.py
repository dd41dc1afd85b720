"""What `instructsam annotate-bag` is asked to do: the options, checked before the bag is read or
the model loaded (no rosbags, no torch needed to check them)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from instructsam_core.errors import UserError
from instructsam_ros.bags.rosbag2_format import DISTROS

STORAGE_NAMES = ("sqlite3", "mcap")  # what the output bag can be stored as
COMPRESSIONS = ("none", "zstd", "lz4")  # MCAP chunk compression; sqlite3: rosbag2's zstd only
COMPRESSION_MODES = ("file", "message")  # rosbag2's compression of a sqlite3 bag
DEFAULT_MAX_PIXELS = 4096 * 4096  # the node's max_input_pixels default


@dataclass
class AnnotateOptions:
    """Everything `instructsam annotate-bag` was asked to do (validated by `check_options`)."""

    bag: Path
    out: Path
    topics: list[str]
    instruction: str
    phrases: list[str] | None = None
    model: str = "default"
    device: str = "cpu"
    dtype: str | None = None
    threshold: float = 0.3
    max_instances: int = 100
    inference_layout: str | None = None  # "release" / "trained"; None: the model config's
    start: float | None = None
    end: float | None = None
    every: int = 1
    batch_size: int = 4
    overlay: bool = False
    storage: str | None = None
    ros_distro: str | None = None  # None: the input's (rosbag2_format.distro_for)
    compression: str | None = None  # None: zstd for MCAP, none for sqlite3
    compression_mode: str | None = None  # sqlite3 with zstd: "file" (default) or "message"
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True
    # Read and write the bag in threads beside the model. None = when the model leaves a core
    # idle: on a GPU, or on a CPU whose model threads are fewer than the usable cores. When the
    # model takes every core the threads only take its CPU (BENCHMARKS.md).
    threads: bool | None = None

    @property
    def use_threads(self) -> bool:
        if self.threads is not None:
            return self.threads
        return self.device.startswith("cuda") or model_leaves_a_core_idle()


def model_leaves_a_core_idle() -> bool:
    """True when torch's CPU threads are fewer than the cores this process may run on."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return torch.get_num_threads() < cores



def check_options(options: AnnotateOptions) -> None:
    """Refuse bad arguments before the bag is read or the model loaded."""
    if not 0.0 <= options.threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {options.threshold}")
    if options.max_instances < 1:
        raise UserError(f"--max-instances must be at least 1, got {options.max_instances}")
    if options.every < 1:
        raise UserError(f"--every must be at least 1, got {options.every}")
    if options.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.max_pixels < 1:
        raise UserError(f"--max-pixels must be at least 1, got {options.max_pixels}")
    for name in ("start", "end"):
        value = getattr(options, name)
        if value is not None and (not math.isfinite(value) or value < 0):
            raise UserError(f"--{name} must be a number of seconds >= 0 from the bag's start, got {value}")
    if options.start is not None and options.end is not None and options.end <= options.start:
        raise UserError(f"--end ({options.end}) must be after --start ({options.start})")
    if not options.topics:
        raise UserError("give at least one image topic (--topics)")
    duplicates = sorted({t for t in options.topics if options.topics.count(t) > 1})
    if duplicates:
        raise UserError(f"topic given twice: {', '.join(duplicates)}")
    if options.phrases is not None and not any(p.strip() for p in options.phrases):
        raise UserError("--phrases were given but all are empty")
    device = options.device
    if not (device in ("cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    for flag, value, names in (("--storage", options.storage, STORAGE_NAMES), ("--ros-distro", options.ros_distro,
                               tuple(DISTROS)), ("--compression", options.compression, COMPRESSIONS),
                               ("--compression-mode", options.compression_mode, COMPRESSION_MODES)):
        if value is not None and value not in names:
            raise UserError(f"{flag} must be one of {', '.join(names)}, got {value!r}")


def output_compression(options: AnnotateOptions, storage: str) -> tuple[str, str | None]:
    """(compression, sqlite3 compression mode) of the output: MCAP compresses its chunks (zstd
    unless told), sqlite3 only when asked, as rosbag2 does (zstd, whole file or each message)."""
    compression = options.compression or ("zstd" if storage == "mcap" else "none")
    if storage == "mcap":
        if options.compression_mode is not None:
            raise UserError("--compression-mode is for sqlite3 output; MCAP compresses its chunks (--compression)")
        return compression, None
    if compression == "lz4":
        raise UserError("rosbag2 compresses sqlite3 bags with zstd only; use --compression zstd or --storage mcap")
    if compression == "none":
        if options.compression_mode is not None:
            raise UserError("--compression-mode needs --compression zstd")
        return "none", None
    return "zstd", options.compression_mode or "file"



def check_output(options: AnnotateOptions) -> None:
    bag, out = options.bag.resolve(), options.out.resolve()
    if out == bag or bag in out.parents or out in bag.parents:
        raise UserError(f"--out {options.out} must be outside the input bag {options.bag}")
    if out.exists() or out.is_symlink():
        if not options.overwrite:
            raise UserError(f"{options.out} exists; pass --overwrite to replace it")
        if not out.is_dir() or not (out / "metadata.yaml").is_file():
            raise UserError(f"refusing to replace {options.out}: it is not a rosbag2 directory")

