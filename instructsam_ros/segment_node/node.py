"""segment_node: a managed ROS 2 node that segments every instance an instruction refers to.

Topics (relative names, so namespaces and remaps work), per camera: the `cameras` parameter
lists camera names, each a sub-namespace (`cameras: [front, wrist]` -> `front/image`,
`front/segmentation`, ...); none listed (the default) is one camera on the names below.
  in   image (sensor_msgs/Image) or image/compressed (use_compressed:=true)
  in   instruction (std_msgs/String; any publisher: volatile, or transient local and latched):
       the node's instruction, which every camera follows until it gets its own on
       <camera>/instruction
  out  segmentation (instructsam_ros/InstanceSegmentation), label_image (mono16),
       overlay (rgb8, only while subscribed); /diagnostics (the node, and each camera)
  with depth:=true, per camera also
  in   depth/image (16UC1 mm, 32FC1 m; depth/image/compressedDepth with use_compressed:=true)
       and depth/camera_info: paired with the colour frames by stamp; every instance gets a
       3-D location (Instance.location) in the depth image's frame, computed in the worker
  out  instance_points (sensor_msgs/PointCloud2 with an instance_id field; only while subscribed)
  srv  segment (instructsam_ros/Segment): one image + instruction (+ camera) -> InstanceSegmentation

Threading: an image callback only drops the frame into its camera's latest-frame slot; one
inference worker thread takes the newest frame of every camera that has one (up to
`max_batch`, cameras served longest ago first) and runs them in one batched model call, so
latency is bounded by one model call whatever the camera rates and a fast camera never takes
a slow one's place. The executor (executor.FramesInlineExecutor) runs frame, instruction and
diagnostics callbacks in its spinning thread and services, parameters and lifecycle
transitions on a thread pool, so neither a Segment call nor a model load holds up the rest.
Bad input (frames, instructions, a model that fails to load) never stops the node: it is
dropped, counted per camera, and reported in a warning rate-limited per camera and reason. SIGINT/SIGTERM stop the process within SHUTDOWN_BUDGET_S
seconds, even while a model call or a model load is still running (see `main`).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from rclpy.utilities import get_rmw_implementation_identifier
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import String
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

from instructsam_core.errors import UserError
from instructsam_ros.segment_node.camera_stream import Frame, RecentMessages, CameraStream, instruction_key, subscribe_instructions  # noqa: F401
from instructsam_ros.segment_node.cameras import DEFAULT_CAMERA, camera_list, camera_parameter, split_camera_parameter
from instructsam_ros.dds.profiles import frame_limit_report, use_large_data_profile  # noqa: F401 - re-exported
from instructsam_ros.segment_node.executor import FramesInlineExecutor
from instructsam_ros.segment_node.diagnostics import ERROR, OK, WARN, FrameTiming, StreamStats, build_diagnostics, build_status
from instructsam_ros.segment_node.frame_slot import LatestSlots
from instructsam_ros.messages.images import BadImageError, compressed_msg_to_rgb, image_msg_to_rgb
from instructsam_ros.messages.instances import prediction_to_msg
from instructsam_ros.interfaces import Segment
from instructsam_ros.segment_node.parameters import (
    ACTIVATE,
    CAMERA_PARAMETER_NAMES,
    CAMERA_PARAMETERS,
    CONFIGURE,
    FOLLOW_NODE,
    PARAMETERS,
    camera_spec,
    clean_phrases,
    phrase_list_problem,
    spec,
    validate,
)
from instructsam_ros.segment_node.segmenter import (
    BadInstructionError,
    DeviceUnavailableError,
    InstructionCounter,
    InstructionState,
    Segmenter,
    SegmentResult,
    StreamRequest,
    clean_instruction,
    load_segmenter,
)

NODE_NAME = "segment_node"
# From SIGINT/SIGTERM to process exit, whatever is still running (a model call, a model load).
SHUTDOWN_BUDGET_S = 2.5
# How long the process waits for the inference worker to finish its batch before exiting anyway.
WORKER_JOIN_ON_EXIT_S = 1.0
# A stamp further than this from the node's clock is taken as being on another clock
# (e.g. a camera's time since boot): frame age then falls back to time since arrival.
MAX_PLAUSIBLE_AGE_S = 60.0


class ProblemLog:
    """Rate-limited warnings, one stream per kind of problem, counting what was held back.

    Kinds are the reasons an input is refused (`BadImageError.kind`, `BadInstructionError.kind`,
    "stale", ...), per camera, so the first rejection of every kind is always logged.
    """

    def __init__(self, logger, period_s: float = 2.0) -> None:
        self._logger = logger
        self._period = period_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -1e9) < self._period:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            held = self._held.pop(kind, 0)
            self._last[kind] = now
        suffix = f" ({held} more like this since the last report)" if held else ""
        self._logger.warning(message + suffix)


@dataclass
class _Job:
    """A frame on its way through one batch."""

    frame: Frame
    rgb: np.ndarray
    instruction: str
    request: StreamRequest
    ages: list[float]


class SegmentNode(LifecycleNode):
    """The InstructSAM lifecycle node; see the module docstring for its interface."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._settings: dict[str, Any] = {}
        for entry in PARAMETERS:
            # Dynamic typing: the type is checked by `validate` with a readable reason, and an
            # integer works for a float parameter (`-p threshold:=1`), which rclpy would refuse.
            value = self.declare_parameter(entry.name, entry.default, self._descriptor(entry)).value
            reason = validate(entry.name, value)
            if reason:
                # A bad value from the command line or YAML: keep the default, say so.
                self.get_logger().error(f"{reason}; using the default {entry.default!r}")
                self.set_parameters([Parameter(entry.name, value=entry.default)])
                value = entry.default
            self._settings[entry.name] = value
        # Per-camera parameters (<camera>.max_frame_age), declared while the camera exists.
        self._camera_settings: dict[str, dict[str, Any]] = {}
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.stats = StreamStats()  # the node: every camera's frames, and the model calls
        self.problems = ProblemLog(self.get_logger())
        # One id sequence for the node's instruction and every camera's own.
        self._instruction_ids = InstructionCounter()
        self.instruction = InstructionState(counter=self._instruction_ids)
        self.instruction.set_fixed_phrases(clean_phrases(self._settings["phrases"]))
        if self._settings["instruction"].strip():
            self._accept_instruction(self._settings["instruction"], "parameter")
        # Own instructions of named cameras, by name; kept when a camera is removed and added again.
        self._camera_instructions: dict[str, InstructionState] = {}

        self._segmenter: Segmenter | None = None
        self._configure_error = ""
        self._active = False
        self._scheduler: LatestSlots[str, Frame] = LatestSlots()
        self._streams: dict[str, CameraStream] = {}  # replaced whole, never changed in place
        self._streams_lock = threading.Lock()
        self._stream_settings: dict[str, Any] = {}  # the settings at configure (topics, QoS)
        self._worker: threading.Thread | None = None
        self._service = None

        # Instructions are accepted in every state, so one published before the node is
        # configured (or even started: transient local) applies as soon as frames flow.
        # Two subscriptions (camera_stream.subscribe_instructions): a volatile one matches every
        # publisher (default-QoS tools such as `ros2 topic pub` included); a transient-local one
        # also gets the instruction latched by a publisher started earlier. A message from a
        # transient-local publisher reaches both and is applied once (`_recent_instructions`).
        self._recent_instructions = RecentMessages()
        self._instruction_group = MutuallyExclusiveCallbackGroup()
        instruction_subs = subscribe_instructions(self, "instruction", self._on_instruction, self._instruction_group)
        self._latched_instruction_sub = instruction_subs[1]
        self._instruction_topic = instruction_subs[0].topic_name
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._diag_timer = self.create_timer(
            float(self._settings["diagnostics_period"]), self._publish_diagnostics, callback_group=self._diag_group,
        )
        self._service_group = MutuallyExclusiveCallbackGroup()
        # Image callbacks of every camera: they only drop the frame into its camera's slot.
        self._image_group = MutuallyExclusiveCallbackGroup()

    def inline_callback_groups(self) -> list:
        """Callback groups whose callbacks never block (frames, instructions, diagnostics): the
        executor runs them in its spinning thread (executor.FramesInlineExecutor)."""
        return [self._image_group, self._instruction_group, self._diag_group]

    @staticmethod
    def _descriptor(entry) -> ParameterDescriptor:
        return ParameterDescriptor(description=f"{entry.description} (applies: {entry.applies})", dynamic_typing=True)

    # ------------------------------------------------------------------ parameters
    def _parameter_spec(self, name: str):
        """(spec, camera) of a parameter this node validates, or None for one it does not own."""
        if name in self._settings:
            return spec(name), None
        split = split_camera_parameter(name)
        if split is not None and split[1] in CAMERA_PARAMETER_NAMES:
            return camera_spec(split[1]), split[0]
        return None

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            owned = self._parameter_spec(param.name)
            if owned is None:
                continue
            reason = validate(param.name, param.value, owned[0])
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        configured = self._segmenter is not None
        for param in params:
            owned = self._parameter_spec(param.name)
            if owned is None:
                continue
            if owned[1] is not None:
                self._camera_settings.setdefault(owned[1], {})[owned[0].name] = param.value
                # Also runs when the camera's parameters are declared (configure), so a start-up
                # value is the camera's instruction before its image subscription exists.
                if owned[0].name == "instruction" and param.value.strip():
                    self._accept_instruction(param.value, "parameter", owned[1])
                continue
            self._settings[param.name] = param.value
            if configured and spec(param.name).applies == CONFIGURE:
                self.get_logger().info(f"{param.name} takes effect at the next configure (cleanup, then configure)")
            elif configured and spec(param.name).applies == ACTIVATE:
                self.get_logger().info(f"{param.name} takes effect at the next activation (deactivate, then activate)")
            if param.name == "instruction" and param.value.strip():
                self._accept_instruction(param.value, "parameter")
            elif param.name == "phrases":
                self.instruction.set_fixed_phrases(clean_phrases(param.value))
            elif param.name == "tracking_iou":
                for stream in self._streams.values():
                    stream.tracker.iou_threshold = float(param.value)
        return SetParametersResult(successful=True)

    def _declare_camera_parameters(self, camera: str) -> None:
        """Declare <camera>.<name> for every per-camera parameter (a value given at start-up,
        e.g. `-p wrist.max_frame_age:=0.2`, applies); a bad value keeps the default, said so."""
        for entry in CAMERA_PARAMETERS:
            name = camera_parameter(camera, entry.name)
            if self.has_parameter(name):
                continue
            try:
                value = self.declare_parameter(name, entry.default, self._descriptor(entry)).value
            except InvalidParameterValueException as error:
                self.get_logger().error(f"{error}; using the default {entry.default!r}")
                value = self.declare_parameter(name, entry.default, self._descriptor(entry), ignore_override=True).value
            self._camera_settings.setdefault(camera, {})[entry.name] = value

    def _undeclare_camera_parameters(self, camera: str) -> None:
        for entry in CAMERA_PARAMETERS:
            name = camera_parameter(camera, entry.name)
            if self.has_parameter(name):
                self.undeclare_parameter(name)
        self._camera_settings.pop(camera, None)

    def _max_frame_age(self, stream: CameraStream) -> float:
        own = float(self._camera_settings.get(stream.name, {}).get("max_frame_age", FOLLOW_NODE))
        return float(self._settings["max_frame_age"]) if own == FOLLOW_NODE else own

    # ------------------------------------------------------------------ instruction
    def _camera_instruction(self, camera: str) -> InstructionState:
        """The own instruction of a named camera (created empty: it follows the node's)."""
        state = self._camera_instructions.get(camera)
        if state is None:
            state = self._camera_instructions.setdefault(camera, InstructionState(counter=self._instruction_ids))
        return state

    def _accept_instruction(self, text: str, source: str, camera: str = DEFAULT_CAMERA) -> bool:
        """Set the node's instruction, or `camera`'s own; refusals are warned and counted."""
        state = self._camera_instruction(camera) if camera else self.instruction
        where = f"{camera} " if camera else ""
        try:
            cleaned, instruction_id = state.set(text)
        except BadInstructionError as error:
            self.problems.warn(f"{camera}/{error.kind}", f"{where}{source}: {error}")
            stream = self._streams.get(camera)
            problem = f"{where}{source}: {error}"
            if stream is not None and camera:
                stream.stats.last_problem = problem
            self.stats.last_problem = problem
            return False
        self.get_logger().info(f"instruction {instruction_id} from {where}{source}: {cleaned!r}")
        return True

    def _on_instruction(self, msg: String, info: dict) -> None:
        if self._recent_instructions.first_time(instruction_key(msg, info)):
            self._accept_instruction(msg.data, "instruction topic")

    def _on_camera_instruction(self, stream: CameraStream, text: str) -> None:
        self._accept_instruction(text, "instruction topic", stream.name)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        s = self._settings
        self.get_logger().info(f"loading model {s['model']!r} on {s['device']} ...")
        start = time.perf_counter()
        try:
            segmenter, warmup_s = load_segmenter(s["model"], s["device"], s["dtype"], float(s["threshold"]), bool(s["warmup"]),
                                                 s["sam3_config"])
        except DeviceUnavailableError as error:
            self._configure_error = f"{error}; fix the 'device' parameter (e.g. auto or cpu)"
            self.stats.last_problem = self._configure_error
            self.get_logger().error(self._configure_error + " and configure again")
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # noqa: BLE001 - any load failure leaves the node unconfigured, alive
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            self._configure_error = f"model {s['model']!r} failed to load: {reason}"
            self.stats.last_problem = self._configure_error
            self.get_logger().error(self._configure_error + " (fix the 'model' or 'sam3_config' parameter and configure again)")
            return TransitionCallbackReturn.FAILURE
        self._diag_timer.timer_period_ns = int(float(s["diagnostics_period"]) * 1e9)
        self._segmenter = segmenter
        self._configure_error = ""
        self.get_logger().info(
            f"model ready on {segmenter.device} in {time.perf_counter() - start:.1f} s (warm-up {warmup_s:.2f} s)"
        )
        self._stream_settings = dict(s)
        self._scheduler = LatestSlots()
        self._apply_cameras()
        self._service = self.create_service(Segment, "segment", self._on_segment, callback_group=self._service_group)
        self._worker = threading.Thread(target=self._work, name="instructsam-inference", daemon=True)
        self._worker.start()
        self.get_logger().info(frame_limit_report(os.environ, get_rmw_implementation_identifier()))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._apply_cameras()  # the camera list may have changed while inactive
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._scheduler.clear()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _apply_cameras(self) -> None:
        """Make the streams match the `cameras` parameter: removed cameras' streams destroyed
        (a frame of theirs still waiting is dropped), new ones created; kept cameras keep
        everything (topics, ids, phrases, counters). Runs while frames are not processed
        (configure, or activate before the node is active)."""
        wanted = camera_list(self._settings["cameras"])
        with self._streams_lock:
            streams = dict(self._streams)
            for name in [n for n in streams if n not in wanted]:
                stream = streams.pop(name)
                self._scheduler.discard(name)
                stream.destroy()
                self.get_logger().info(f"{stream.label}: removed (stopped listening on {stream.image_topic})")
            for name in [n for n in self._camera_settings if n not in wanted]:
                self._undeclare_camera_parameters(name)  # also of a camera removed while unconfigured
            for name in wanted:
                if name in streams:
                    continue
                if name:
                    self._declare_camera_parameters(name)
                stream = CameraStream(
                    self, name, self._stream_settings, self._submit, self.stats,
                    self._camera_instruction(name) if name else None, self._on_camera_instruction,
                    self._image_group, self._instruction_group, float(self._settings["tracking_iou"]),
                    warn=self._warn,
                )
                streams[name] = stream
                s = self._stream_settings
                own = f"; own instruction on {stream.instruction_topic}" if stream.instruction_topic else ""
                self.get_logger().info(
                    f"{stream.label + ': ' if name else ''}listening on {stream.image_topic} "
                    f"({s['image_qos_reliability']}, depth {s['image_qos_depth']}){own}"
                )
            self._streams = {name: streams[name] for name in wanted}

    def stop_for_exit(self, timeout: float) -> None:
        """Stop streaming before the process exits: no model release, no waiting for a model call.

        The worker gets `timeout` seconds to finish the batch it is on; a model call still
        running after that ends with the process.
        """
        self._active = False
        self._scheduler.close()
        if self._worker is not None:
            self._worker.join(timeout=timeout)

    def _teardown(self) -> None:
        """Stop the worker, destroy the streams and the service, release the model."""
        self._active = False
        self._scheduler.close()
        if self._worker is not None:
            self._worker.join(timeout=60.0)
            self._worker = None
        with self._streams_lock:
            streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.destroy()  # its <camera>.* parameters stay: the camera list has not changed
        if self._service is not None:
            self.destroy_service(self._service)
            self._service = None
        if self._segmenter is not None:
            self._segmenter.release()
            self._segmenter = None

    # ------------------------------------------------------------------ streaming
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

    # ------------------------------------------------------------------ service
    def _known_cameras(self) -> list[str]:
        names = list(self._settings["cameras"])
        return names + [name for name in self._streams if name and name not in names]

    def _on_segment(self, request: Segment.Request, response: Segment.Response) -> Segment.Response:
        s = self._settings
        camera = request.camera.strip()
        if camera:
            known = self._known_cameras()
            if camera not in known:
                served = f"its cameras are {', '.join(known)}" if known else "it has no named cameras (leave camera empty)"
                response.success, response.message = False, f"unknown camera {camera!r}: {served}"
                return response
            own = self._camera_instruction(camera)
            current, current_id, _ = own.snapshot()
            if not current:
                current, current_id, _ = self.instruction.snapshot()
        else:
            current, current_id, _ = self.instruction.snapshot()
        text = request.instruction.strip()
        try:
            instruction = clean_instruction(text) if text else clean_instruction(current)
        except BadInstructionError as error:
            response.success, response.message = False, f"{error} (and the node has no current instruction)" if not text else str(error)
            return response
        # The same limits as the `phrases` parameter, checked before anything is changed.
        phrases = [p.strip() for p in request.phrases]
        problem = phrase_list_problem(phrases)
        if problem:
            response.success, response.message = False, f"phrases {problem}"
            return response
        instruction_id = current_id if instruction == current and not request.set_as_current else 0
        if request.set_as_current:
            self._accept_instruction(instruction, "segment service", camera)
            state = self._camera_instruction(camera) if camera else self.instruction
            _, instruction_id, _ = state.snapshot()
        if request.image.width == 0 and request.image.height == 0 and not request.image.data:
            response.success = bool(request.set_as_current)
            response.message = "instruction set" if request.set_as_current else "empty image"
            return response
        segmenter = self._segmenter
        if segmenter is None or not self._active:
            state = "not configured" if segmenter is None else "inactive"
            response.success, response.message = False, f"node is {state}" + (f": {self._configure_error}" if self._configure_error else "")
            return response
        try:
            rgb = image_msg_to_rgb(request.image, int(s["max_input_pixels"]))
            start = time.monotonic()
            result = segmenter.segment_once(rgb, instruction, phrases or None, float(s["threshold"]), int(s["max_instances"]), instruction_id)
        except UserError as error:
            response.success, response.message = False, str(error)
            return response
        except Exception as error:  # noqa: BLE001 - a failed request must not take the node down
            response.success, response.message = False, f"inference failed: {type(error).__name__}: {error}"
            return response
        response.segmentation = prediction_to_msg(
            result.prediction, result.ids, request.image.header, instruction_id, result.model_latency,
            time.monotonic() - start, result.boxes, instruction,
        )
        response.success, response.message = True, f"{len(result.ids)} instances"
        return response

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        state = "active" if self._active else ("inactive" if self._segmenter is not None else "unconfigured")
        instruction, instruction_id, fixed = self.instruction.snapshot()
        streams = list(self._streams.values())
        named = [stream for stream in streams if stream.name]
        if self._configure_error:
            level, message = ERROR, self._configure_error
        elif not self._active:
            level, message = WARN, f"{state}: not processing frames"
        elif not named and not instruction:
            level, message = WARN, "no instruction"
        elif self.stats.received == 0:
            level, message = WARN, "no frames received"
        else:
            level, message = OK, f"segmenting {len(named)} cameras" if named else "segmenting"
        extra = {
            "state": state,
            "instruction": instruction,
            "instruction_id": str(instruction_id),
            "fixed_phrases": ", ".join(fixed),
            "model": str(self._settings["model"]),
            "device": self._segmenter.device if self._segmenter is not None else str(self._settings["device"]),
        }
        if named:
            extra["cameras"] = ", ".join(stream.name for stream in named)
        device = self._segmenter.device if self._segmenter is not None else None
        fqn = self.get_fully_qualified_name()
        array = build_diagnostics(
            f"{fqn}: segmentation", "instructsam", level, message,
            self.stats, extra, self.get_clock().now().to_msg(), device,
            [self._camera_status(fqn, stream, state) for stream in named],
        )
        self._diag_pub.publish(array)

    def _camera_status(self, fqn: str, stream: CameraStream, state: str) -> DiagnosticStatus:
        instruction, instruction_id, fixed, own = stream.instruction_snapshot(self.instruction)
        if self._configure_error or not self._active:
            level, message = WARN, f"{state}: not processing frames"
        elif not instruction:
            level, message = WARN, "no instruction"
        elif stream.stats.received == 0:
            level, message = WARN, "no frames received"
        else:
            level, message = OK, "segmenting"
        extra = {
            "camera": stream.name,
            "image_topic": stream.image_topic,
            "instruction": instruction,
            "instruction_id": str(instruction_id),
            "instruction_from": "camera" if own else "node",
            "fixed_phrases": ", ".join(fixed),
            "max_frame_age": f"{self._max_frame_age(stream):g}",
        }
        return build_status(f"{fqn}: {stream.label}", "instructsam", level, message, stream.stats, extra,
                            memory=False, batches=False)


def _exit_now(status: int, why: str = "") -> None:
    """End the process at once (no interpreter teardown), flushing what was printed."""
    if why:
        os.write(2, (why + "\n").encode())
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)  # C stdio buffers (logging, DDS) as well
    except (OSError, AttributeError):
        pass
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `segment_node` / `instructsam-segment-node` (ROS arguments accepted).

    SIGINT and SIGTERM are handled here rather than by rclpy: they set a flag that the spin
    loop checks every 0.1 s. (rclpy's handler shuts the context down under the running
    executor, which then sometimes fails with "context is not valid" and exit status 1.)
    Shutdown is bounded by SHUTDOWN_BUDGET_S: the worker gets WORKER_JOIN_ON_EXIT_S to finish
    its frame, the node's entities are destroyed, the context is shut down, and the process
    ends with os._exit, because a normal interpreter exit would first wait for any callback
    still running (a service call's inference, a model load in configure) and then for the
    interpreter's teardown (about a second with torch loaded). A watchdog ends the process if
    those steps themselves take longer than the budget. The model's memory goes with the
    process, so it is not released first.
    """
    use_large_data_profile()
    rclpy.init(args=sys.argv if argv is None else argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    node = SegmentNode()
    # Frame, instruction and diagnostics callbacks in the spinning thread; services, lifecycle
    # transitions (a model load) and parameter changes on a pool (executor.py says why).
    executor = FramesInlineExecutor(node.inline_callback_groups(), num_threads=3)
    executor.add_node(node)
    if node.get_parameter("autostart").value:
        def autostart() -> None:
            timer.cancel()
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()

        timer = node.create_timer(0.0, autostart, callback_group=MutuallyExclusiveCallbackGroup())
    status = 0
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - reported, then the same bounded shutdown
        import traceback

        traceback.print_exc()
        status = 1
    watchdog = threading.Timer(
        SHUTDOWN_BUDGET_S, _exit_now,
        args=(status, f"[segment_node] shutdown took longer than {SHUTDOWN_BUDGET_S} s; exiting now"),
    )
    watchdog.daemon = True
    watchdog.start()
    if received:
        node.get_logger().info(f"{received[0]}: stopping")
    node.stop_for_exit(WORKER_JOIN_ON_EXIT_S)
    node.destroy_node()
    rclpy.try_shutdown()
    _exit_now(status)
    return status  # not reached

