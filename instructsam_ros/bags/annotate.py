"""Offline annotation of recorded camera topics: a rosbag2 (sqlite3 or MCAP) or .mcap/.db3 in, a
new bag with every frame segmented out, without ROS (rosbags reads the bag, storage.py writes
the output as the input's ROS 2 distribution writes bags).

One streaming pass over the input, in log-time order (batching.py):
  * every message is queued for the output as it is read (reading.py); a chosen frame (image
    topic, inside --start/--end, every N-th) is decoded (messages.images) and joins its topic's
    open batch;
  * a batch closes at --batch-size frames, when the bag's log time has moved MAX_BATCH_SPAN_NS
    past its first frame, or at the end; then the model runs on it and its results are
    appended as one line to `<out>.partial/frames.jsonl` (the resumable record, journal.py);
  * the queue is released in input order to a writer thread (writer.py), which copies each
    message byte for byte with its log time and adds, after each annotated frame,
    `<topic>/segmentation`, `<topic>/label_image` (and `<topic>/overlay`) with the frame's
    header and log time. The thread's copying and writing overlap the model, so the pass is
    bounded by the model.
Before the pass the bag's indexes are checked against its files (source.py); after it, every
message the files index must have gone to the output, and some frame must have been annotated,
or the run stops (exit 2) and nothing is written. The bag and `coco.json` are written inside
`<out>.partial/` and renamed to `<out>` last: an output that exists is complete.

Killed and run again with the same arguments, the pass reads the finished batches' results
from frames.jsonl instead of running the model and rewrites the output from the start. The
result is the same bytes as an uninterrupted run: batch boundaries depend only on the bag
(frame counts and log times), never on where a run stopped; masks (RLE) and scores (float repr)
are recorded losslessly and the output is always built from those values (frames.py); and
tracker ids are assigned in output order by one thread. Nothing comes from the clock.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from instructsam_core.errors import UserError
from instructsam_ros.bags.batching import AnnotationPass
from instructsam_ros.bags.journal import RunState, fingerprint, write_atomic
from instructsam_ros.bags.options import AnnotateOptions, check_options, check_output, output_compression
from instructsam_ros.bags.reading import count_frames, open_bag, resolve_topics, storage_of, time_window
from instructsam_ros.bags.rosbag2_format import DISTROS, distro_for
from instructsam_ros.bags.summary import COCO_NAME, Summary, nothing_annotated
from instructsam_ros.bags.types import BagMessages, build_typestore
from instructsam_ros.bags.writer import OutputBag


def annotate_bag(options: AnnotateOptions, load_predictor: Callable[[], Any], log: Callable[[str], None] = print) -> Summary:
    """Annotate a bag; `load_predictor` is called only when some frame still needs the model."""
    from tqdm import tqdm

    from instructsam_core.model_paths import resolve_model_dir

    wall = time.perf_counter()
    check_options(options)
    check_output(options)
    model_dir = resolve_model_dir(options.model)
    messages = BagMessages(build_typestore())
    reader = open_bag(options.bag, messages.store)
    storage = options.storage or storage_of(options.bag)
    summary = Summary(out=options.out, storage=storage)
    summary.seconds.update(count=0.0, load=0.0, decode=0.0, model=0.0, record=0.0, finish=0.0)
    state = RunState(options.out)
    output = None
    finished = discard = False
    try:
        compression = output_compression(options, storage)
        reader.check_index()  # a bag whose files lack messages its metadata lists: refused before any work
        distro = DISTROS[options.ros_distro] if options.ros_distro else distro_for(reader.version, reader.ros_distro)
        summary.distro, summary.compression = distro, compression
        topics = resolve_topics(reader, options.bag, options.topics)
        window = time_window(reader, options.start, options.end)
        start = time.perf_counter()
        summary.frames = count_frames(reader, options.bag, topics, window, options.every,
                                      whole_bag=options.start is None and options.end is None)
        summary.seconds["count"] = time.perf_counter() - start
        if summary.frames == 0:
            raise UserError(f"no frames of {', '.join(options.topics)} in the chosen time range of {options.bag}")
        state.open(fingerprint(options, model_dir), options.overwrite)
        summary.resumed = sum(len(frames) for frames in state.batches.values())
        if summary.resumed:
            log(f"resuming: {summary.resumed} of {summary.frames} frames were done by an earlier run ({state.dir})")
        staging = state.dir / "output" / options.out.name
        shutil.rmtree(staging.parent, ignore_errors=True)  # a bag an interrupted run was writing
        staging.parent.mkdir(parents=True)
        output = OutputBag(staging, storage, reader, topics, messages, options, options.use_threads, distro, compression)
        bar = tqdm(total=summary.frames, initial=summary.resumed, unit="frame", desc="annotating",
                   disable=not options.progress, mininterval=1.0)
        AnnotationPass(reader, options, topics, window, state, output, load_predictor, summary, bar).run()
        bar.close()
        discard = True  # a bag that lost messages, or gave no frame, leaves nothing worth resuming
        _check_copied(reader.counts(), output.handed, options.bag)
        if not summary.annotated:
            raise UserError(nothing_annotated(summary, options.bag))
        discard = False
        start = time.perf_counter()
        output.finish()
        summary.messages_copied, summary.messages_added, summary.size = output.copied, output.added, output.size
        write_atomic(staging / COCO_NAME, json.dumps(output.coco(), separators=(",", ":")) + "\n")
        output = None
        if options.out.exists():  # --overwrite, checked above
            shutil.rmtree(options.out)
        os.replace(staging, options.out)
        _fsync_dir(options.out.parent)
        summary.seconds["finish"] = time.perf_counter() - start
        finished = True
    finally:
        if output is not None:
            output.abort()
        reader.close()
        if finished or (state.owned and (discard or not state.holds_results())):
            state.remove()  # done, or failed before any result worth resuming from
        state.close()
    summary.seconds["total"] = time.perf_counter() - wall
    return summary


def _check_copied(listed, copied, bag: Path) -> None:
    """Every message the bag's files index goes to the output, or nothing is written."""
    for topic in sorted(set(listed) | set(copied)):
        if copied[topic] != listed[topic]:
            raise UserError(f"read {copied[topic]} of the {listed[topic]} messages that the index of {bag} lists on "
                            f"{topic}; the bag is damaged, nothing was written")


def _fsync_dir(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
