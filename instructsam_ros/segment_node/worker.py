"""The inference worker: frames taken from the cameras' slots, prepared, run as one batch, published.

An image callback only drops the frame into its camera's latest-frame slot (`_submit`); one
worker thread takes the newest frame of every camera that has one (up to `max_batch`, cameras
served longest ago first) and runs them in one batched model call, so latency is bounded by
one model call whatever the camera rates and a fast camera never takes a slow one's place.
Frames too old (`max_frame_age`, measured again when the model is free), without an
instruction or with bad pixels are dropped, counted per camera and warned about (rate-limited).
Each result goes to its own camera's stream (`CameraStream.publish`).

`InferenceWorker` is part of SegmentNode (a mixin of node.py): it reads `_settings`,
`_segmenter`, `_active`, `_scheduler`, `instruction` and `problems`, and `_max_frame_age`
(node_parameters.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage

from instructsam_ros.messages.images import BadImageError, compressed_msg_to_rgb, image_msg_to_rgb
from instructsam_ros.segment_node.camera_stream import CameraStream, Frame
from instructsam_ros.segment_node.diagnostics import FrameTiming
from instructsam_ros.segment_node.segmenter import SegmentResult, StreamRequest

# A stamp further than this from the node's clock is taken as being on another clock
# (e.g. a camera's time since boot): frame age then falls back to time since arrival.
MAX_PLAUSIBLE_AGE_S = 60.0


@dataclass
class _Job:
    """A frame on its way through one batch."""

    frame: Frame
    rgb: np.ndarray
    instruction: str
    request: StreamRequest
    ages: list[float]


class InferenceWorker:
    """The node's streaming path (see the module docstring)."""

    def _submit(self, stream: CameraStream, frame: Frame) -> None:
        """Image callbacks: the frame takes its camera's slot (replacing one never started)."""
        if not self._active:
            return
        if self._scheduler.put(stream.name, frame):
            stream.count("dropped_replaced")

    def _frame_age(self, frame: Frame) -> float:
        stamp = Time.from_msg(frame.msg.header.stamp).nanoseconds
        since_arrival = time.monotonic() - frame.arrival
        if stamp == 0:
            return since_arrival
        age = (self.get_clock().now().nanoseconds - stamp) / 1e9
        if 0.0 <= age <= MAX_PLAUSIBLE_AGE_S:
            return age
        if -MAX_PLAUSIBLE_AGE_S <= age < 0.0:
            return since_arrival  # stamped slightly ahead of this clock
        stream = frame.stream
        if not stream.stamp_warned:
            stream.stamp_warned = True
            prefix = f"{stream.label}: " if stream.name else ""
            self.get_logger().warning(
                f"{prefix}image stamps are {age:.0f} s away from this node's clock; frame age is measured from arrival"
            )
        return since_arrival

    def _work(self) -> None:
        scheduler = self._scheduler
        while True:
            taken = scheduler.take_batch(int(self._settings["max_batch"]), timeout=0.5)
            if scheduler.closed:
                return
            if not taken or not self._active:
                continue
            frames = [frame for _, frame in taken]
            try:
                self._process_batch(frames)
            except Exception as error:  # noqa: BLE001 - the worker must survive anything
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                for frame in frames:
                    frame.stream.count("dropped_bad_input", f"inference failed: {reason}")
                self.problems.warn("inference", f"frames dropped: inference failed: {type(error).__name__}: {reason}")

    def _warn(self, stream: CameraStream, kind: str, message: str) -> None:
        """A warning about one camera's input, rate-limited per camera and kind."""
        self.problems.warn(f"{stream.name}/{kind}", f"{stream.label}: {message}" if stream.name else message)

    def _too_old(self, stream: CameraStream, age: float, when: str) -> bool:
        """Count and report a frame older than its camera's max_frame_age; True when it must be dropped."""
        max_age = self._max_frame_age(stream)
        if max_age <= 0 or age <= max_age:
            return False
        stream.count("dropped_stale", f"frame {age * 1e3:.0f} ms old {when} > max_frame_age")
        self._warn(stream, "stale", f"frame dropped: {age * 1e3:.0f} ms old {when}, max_frame_age is {max_age * 1e3:.0f} ms")
        return True

    def _prepare(self, frame: Frame) -> _Job | None:
        """Age, instruction and pixels of one frame; None when it is dropped (counted, warned)."""
        stream = frame.stream
        if stream.closed:
            return None
        if self._too_old(stream, self._frame_age(frame), "when taken"):
            return None
        instruction, instruction_id, fixed, own = stream.instruction_snapshot(self.instruction)
        if not instruction:
            stream.count("skipped_no_instruction")
            where = f" or on {stream.instruction_topic}" if stream.instruction_topic else ""
            self._warn(stream, "no_instruction", f"no instruction yet: publish one on {self._instruction_topic}{where} "
                                                 "or set the 'instruction' parameter")
            return None
        max_pixels = int(self._settings["max_input_pixels"])
        try:
            if isinstance(frame.msg, CompressedImage):
                rgb = compressed_msg_to_rgb(frame.msg, max_pixels)
            else:
                rgb = image_msg_to_rgb(frame.msg, max_pixels)
        except BadImageError as error:
            stream.count("dropped_bad_input", str(error))
            self._warn(stream, error.kind, f"frame dropped: {error}")
            return None
        ages: list[float] = []

        def fresh_when_model_free() -> bool:
            # The model may have been busy with a service call: age the frame again now.
            ages.append(self._frame_age(frame))
            return not self._too_old(stream, ages[-1], "when the model was free")

        request = StreamRequest(rgb, instruction, instruction_id, fixed, stream.phrase_cache, stream.tracker, fresh_when_model_free)
        return _Job(frame, rgb, instruction, request, ages)

    def _process_batch(self, frames: list[Frame]) -> None:
        s = self._settings
        segmenter = self._segmenter
        if segmenter is None:
            return
        jobs = [job for job in (self._prepare(frame) for frame in frames) if job is not None]
        if not jobs:
            return
        outcomes = segmenter.segment_batch(
            [job.request for job in jobs],
            threshold=float(s["threshold"]), max_instances=int(s["max_instances"]),
            regenerate_period=float(s["regenerate_period"]), empty_retry_period=float(s["empty_retry_period"]),
        )
        ran = [o for o in outcomes if isinstance(o, BaseException) or (isinstance(o, SegmentResult) and o.batch_size)]
        if ran:
            self.stats.record_batch(len(ran))
        for job, outcome in zip(jobs, outcomes):
            stream = job.frame.stream
            if outcome is None:
                continue  # too old once the model was free (counted)
            if isinstance(outcome, BaseException):
                reason = str(outcome).splitlines()[0] if str(outcome) else type(outcome).__name__
                stream.count("dropped_bad_input", f"inference failed: {reason}")
                self._warn(stream, "inference", f"frame dropped: inference failed: {type(outcome).__name__}: {reason}")
                continue
            if outcome.generated:
                prefix = f"{stream.label}: " if stream.name else ""
                self.get_logger().info(f"{prefix}instruction {outcome.instruction_id}: phrases {outcome.prediction.phrases}")
            if stream.publish(job.frame, job.rgb, outcome, job.instruction, s, self._active):
                now = time.monotonic()
                stream.record(FrameTiming(now, now - job.frame.arrival, outcome.model_latency, job.ages[-1]))
