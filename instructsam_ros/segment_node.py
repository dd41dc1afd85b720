"""segment_node: a managed ROS 2 node that segments every instance an instruction refers to.

Topics (relative names, so namespaces and remaps give one node per camera):
  in   image (sensor_msgs/Image) or image/compressed (use_compressed:=true)
  in   instruction (std_msgs/String; any publisher: volatile, or transient local and latched)
  out  segmentation (instructsam_ros/InstanceSegmentation), label_image (mono16),
       overlay (rgb8, only while subscribed), /diagnostics
  srv  segment (instructsam_ros/Segment): one image + instruction -> InstanceSegmentation

Threading: the image callback only drops the frame into a one-slot buffer; an inference worker
thread takes the newest frame, so latency is bounded by one inference whatever the camera
rate, and a multi-threaded executor keeps services, parameters and lifecycle transitions
responsive during inference. Bad input (frames, instructions, a model that fails to load)
never stops the node: it is dropped, counted, and reported in a warning rate-limited per
reason. SIGINT/SIGTERM stop the process within SHUTDOWN_BUDGET_S seconds, even while a model
call or a model load is still running (see `main`).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from rclpy.utilities import get_rmw_implementation_identifier
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from diagnostic_msgs.msg import DiagnosticArray

from instructsam_core.errors import UserError
from instructsam_ros.dds_profile import frame_limit_report, use_large_data_profile  # noqa: F401 - re-exported
from instructsam_ros.diagnostics import ERROR, OK, WARN, FrameTiming, StreamStats, build_diagnostics
from instructsam_ros.image_conversions import BadImageError, array_to_image_msg, compressed_msg_to_rgb, image_msg_to_rgb
from instructsam_ros.instance_conversions import label_image, prediction_to_msg
from instructsam_ros.interfaces import InstanceSegmentation
from instructsam_ros.overlay import draw_overlay
from instructsam_ros.parameters import CONFIGURE, PARAMETERS, clean_phrases, phrase_list_problem, spec, validate
from instructsam_ros.frame_slot import LatestSlot
from instructsam_ros.qos import instruction_qos, live_instruction_qos, stream_qos
from instructsam_ros.segmenter import (
    BadInstructionError,
    DeviceUnavailableError,
    InstructionState,
    Segmenter,
    clean_instruction,
    load_segmenter,
)
from instructsam_ros.interfaces import Segment

NODE_NAME = "segment_node"
# From SIGINT/SIGTERM to process exit, whatever is still running (a model call, a model load).
SHUTDOWN_BUDGET_S = 2.5
# How long the process waits for the inference worker to finish its frame before exiting anyway.
WORKER_JOIN_ON_EXIT_S = 1.0
# A stamp further than this from the node's clock is taken as being on another clock
# (e.g. a camera's time since boot): frame age then falls back to time since arrival.
MAX_PLAUSIBLE_AGE_S = 60.0


@dataclass
class Frame:
    msg: Image | CompressedImage
    arrival: float  # monotonic seconds


class ProblemLog:
    """Rate-limited warnings, one stream per kind of problem, counting what was held back.

    Kinds are the reasons an input is refused (`BadImageError.kind`, `BadInstructionError.kind`,
    "stale", ...), so the first rejection of every kind is always logged.
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


class RecentMessages:
    """Identities of the last messages seen, so that a message received twice is applied once."""

    def __init__(self, size: int = 64) -> None:
        self._seen: deque[tuple] = deque(maxlen=size)
        self._lock = threading.Lock()

    def first_time(self, key: tuple) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            self._seen.append(key)
            return True


class SegmentNode(LifecycleNode):
    """The InstructSAM lifecycle node; see the module docstring for its interface."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._settings: dict[str, Any] = {}
        for entry in PARAMETERS:
            # Dynamic typing: the type is checked by `validate` with a readable reason, and an
            # integer works for a float parameter (`-p threshold:=1`), which rclpy would refuse.
            descriptor = ParameterDescriptor(
                description=f"{entry.description} (applies: {entry.applies})", dynamic_typing=True
            )
            value = self.declare_parameter(entry.name, entry.default, descriptor).value
            reason = validate(entry.name, value)
            if reason:
                # A bad value from the command line or YAML: keep the default, say so.
                self.get_logger().error(f"{reason}; using the default {entry.default!r}")
                self.set_parameters([Parameter(entry.name, value=entry.default)])
                value = entry.default
            self._settings[entry.name] = value
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.stats = StreamStats()
        self.problems = ProblemLog(self.get_logger())
        self.instruction = InstructionState()
        self.instruction.set_fixed_phrases(clean_phrases(self._settings["phrases"]))
        if self._settings["instruction"].strip():
            self._accept_instruction(self._settings["instruction"], "parameter")

        self._segmenter: Segmenter | None = None
        self._configure_error = ""
        self._active = False
        self._slot: LatestSlot[Frame] = LatestSlot()
        self._worker: threading.Thread | None = None
        self._entities: list[Any] = []
        self._seg_pub = self._label_pub = self._overlay_pub = None
        self._stamp_warned = False

        # Instructions are accepted in every state, so one published before the node is
        # configured (or even started: transient local) applies as soon as frames flow.
        # Two subscriptions: a volatile one matches every publisher (default-QoS tools such as
        # `ros2 topic pub` included); a transient-local one also gets the instruction latched by
        # a publisher started earlier, but cannot match volatile publishers (its "incompatible
        # QoS" reports are expected and silenced). A message from a transient-local publisher
        # reaches both and is applied once (`_recent_instructions`).
        self._recent_instructions = RecentMessages()
        instruction_group = MutuallyExclusiveCallbackGroup()
        instruction_sub = self.create_subscription(
            String, "instruction", self._on_instruction, live_instruction_qos(), callback_group=instruction_group,
        )
        self._latched_instruction_sub = self.create_subscription(
            String, "instruction", self._on_instruction, instruction_qos(), callback_group=instruction_group,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda event: None),
        )
        self._instruction_topic = instruction_sub.topic_name
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(
            float(self._settings["diagnostics_period"]), self._publish_diagnostics,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._image_group = MutuallyExclusiveCallbackGroup()

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name not in self._settings:
                continue
            reason = validate(param.name, param.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        configured = self._segmenter is not None
        for param in params:
            if param.name not in self._settings:
                continue
            self._settings[param.name] = param.value
            if configured and spec(param.name).applies == CONFIGURE:
                self.get_logger().info(f"{param.name} takes effect at the next configure (cleanup, then configure)")
            if param.name == "instruction" and param.value.strip():
                self._accept_instruction(param.value, "parameter")
            elif param.name == "phrases":
                self.instruction.set_fixed_phrases(clean_phrases(param.value))
            elif param.name == "tracking_iou" and self._segmenter is not None:
                self._segmenter.tracker.iou_threshold = float(param.value)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ instruction
    def _accept_instruction(self, text: str, source: str) -> bool:
        try:
            cleaned, instruction_id = self.instruction.set(text)
        except BadInstructionError as error:
            self.problems.warn(error.kind, f"{source}: {error}")
            self.stats.last_problem = f"{source}: {error}"
            return False
        self.get_logger().info(f"instruction {instruction_id} from {source}: {cleaned!r}")
        return True

    def _on_instruction(self, msg: String, info: dict) -> None:
        # One sample has the same source timestamp, sequence number and writer on both
        # subscriptions; two publications of the same text differ in those.
        key = (msg.data, info.get("source_timestamp"), info.get("publication_sequence_number"), repr(info.get("publisher_gid")))
        if self._recent_instructions.first_time(key):
            self._accept_instruction(msg.data, "instruction topic")

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
        segmenter.tracker.iou_threshold = float(s["tracking_iou"])
        self._diag_timer.timer_period_ns = int(float(s["diagnostics_period"]) * 1e9)
        self._segmenter = segmenter
        self._configure_error = ""
        self.get_logger().info(
            f"model ready on {segmenter.device} in {time.perf_counter() - start:.1f} s (warm-up {warmup_s:.2f} s)"
        )

        out_qos = stream_qos(s["output_qos_reliability"], int(s["output_qos_depth"]))
        self._seg_pub = self.create_lifecycle_publisher(InstanceSegmentation, "segmentation", out_qos)
        self._label_pub = self.create_lifecycle_publisher(Image, "label_image", out_qos)
        self._overlay_pub = self.create_lifecycle_publisher(Image, "overlay", out_qos)
        in_qos = stream_qos(s["image_qos_reliability"], int(s["image_qos_depth"]))
        if s["use_compressed"]:
            image_sub = self.create_subscription(CompressedImage, "image/compressed", self._on_image, in_qos, callback_group=self._image_group)
        else:
            image_sub = self.create_subscription(Image, "image", self._on_image, in_qos, callback_group=self._image_group)
        service = self.create_service(Segment, "segment", self._on_segment, callback_group=self._service_group)
        self._entities = [image_sub, service]
        self._slot = LatestSlot()
        self._worker = threading.Thread(target=self._work, name="instructsam-inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"listening on {image_sub.topic_name} ({s['image_qos_reliability']}, depth {s['image_qos_depth']})"
        )
        self.get_logger().info(frame_limit_report(os.environ, get_rmw_implementation_identifier()))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._slot.clear()
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

    def stop_for_exit(self, timeout: float) -> None:
        """Stop streaming before the process exits: no model release, no waiting for a model call.

        The worker gets `timeout` seconds to finish the frame it is on; a model call still
        running after that ends with the process.
        """
        self._active = False
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=timeout)

    def _teardown(self) -> None:
        """Stop the worker, destroy the streaming entities and release the model."""
        self._active = False
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=60.0)
            self._worker = None
        for entity in self._entities:
            if hasattr(entity, "srv_type"):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        self._entities = []
        for pub in (self._seg_pub, self._label_pub, self._overlay_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub) if hasattr(self, "destroy_lifecycle_publisher") else self.destroy_publisher(pub)
        self._seg_pub = self._label_pub = self._overlay_pub = None
        if self._segmenter is not None:
            self._segmenter.release()
            self._segmenter = None

    # ------------------------------------------------------------------ streaming
    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.stats.count("received")
        if not self._active:
            return
        frame = Frame(msg, time.monotonic())
        if self._slot.put(frame):
            self.stats.count("dropped_replaced")

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
        if not self._stamp_warned:
            self._stamp_warned = True
            self.get_logger().warning(
                f"image stamps are {age:.0f} s away from this node's clock; frame age is measured from arrival"
            )
        return since_arrival

    def _work(self) -> None:
        slot = self._slot
        while True:
            frame = slot.take(timeout=0.5)
            if slot.closed:
                return
            if frame is None or not self._active:
                continue
            try:
                self._process(frame)
            except Exception as error:  # noqa: BLE001 - the worker must survive anything
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                self.stats.count("dropped_bad_input", f"inference failed: {reason}")
                self.problems.warn("inference", f"frame dropped: inference failed: {type(error).__name__}: {reason}")

    def _too_old(self, age: float, when: str) -> bool:
        """Count and report a frame older than max_frame_age; True when it must be dropped."""
        max_age = float(self._settings["max_frame_age"])
        if max_age <= 0 or age <= max_age:
            return False
        self.stats.count("dropped_stale", f"frame {age * 1e3:.0f} ms old {when} > max_frame_age")
        self.problems.warn("stale", f"frame dropped: {age * 1e3:.0f} ms old {when}, max_frame_age is {max_age * 1e3:.0f} ms")
        return True

    def _process(self, frame: Frame) -> None:
        s = self._settings
        segmenter = self._segmenter
        if segmenter is None:
            return
        if self._too_old(self._frame_age(frame), "when taken"):
            return
        instruction, instruction_id, fixed = self.instruction.snapshot()
        if not instruction:
            self.stats.count("skipped_no_instruction")
            self.problems.warn(
                "no_instruction",
                f"no instruction yet: publish one on {self._instruction_topic} "
                "or set the 'instruction' parameter",
            )
            return
        try:
            if isinstance(frame.msg, CompressedImage):
                rgb = compressed_msg_to_rgb(frame.msg, int(s["max_input_pixels"]))
            else:
                rgb = image_msg_to_rgb(frame.msg, int(s["max_input_pixels"]))
        except BadImageError as error:
            self.stats.count("dropped_bad_input", str(error))
            self.problems.warn(error.kind, f"frame dropped: {error}")
            return
        ages: list[float] = []

        def fresh_when_model_free() -> bool:
            # The model may have been busy with a service call: age the frame again now.
            ages.append(self._frame_age(frame))
            return not self._too_old(ages[-1], "when the model was free")

        result = segmenter.segment_stream(
            rgb, instruction, instruction_id, fixed,
            threshold=float(s["threshold"]), max_instances=int(s["max_instances"]),
            regenerate_period=float(s["regenerate_period"]), empty_retry_period=float(s["empty_retry_period"]),
            admit=fresh_when_model_free,
        )
        if result is None:
            return
        age = ages[-1]
        if result.generated:
            self.get_logger().info(f"instruction {instruction_id}: phrases {result.prediction.phrases}")
        self._publish(frame, rgb, result, instruction)
        self.stats.record(FrameTiming(time.monotonic(), time.monotonic() - frame.arrival, result.model_latency, age))

    def _publish(self, frame: Frame, rgb, result, instruction: str) -> None:
        header = frame.msg.header
        prediction = result.prediction
        seg_pub, label_pub, overlay_pub = self._seg_pub, self._label_pub, self._overlay_pub
        if seg_pub is None or not self._active:
            return  # deactivated during inference: the result is not published
        want_label = bool(self._settings["publish_label_image"]) and label_pub.get_subscription_count() > 0
        want_overlay = bool(self._settings["publish_overlay"]) and overlay_pub.get_subscription_count() > 0
        labels = None
        if want_label or want_overlay:
            labels = label_image(prediction.instances, result.ids, rgb.shape[0], rgb.shape[1], result.boxes)
        msg = prediction_to_msg(prediction, result.ids, header, result.instruction_id, result.model_latency, 0.0, result.boxes, instruction)
        msg.processing_latency = time.monotonic() - frame.arrival
        seg_pub.publish(msg)
        if want_label:
            label_pub.publish(array_to_image_msg(labels, "mono16", header))
        if want_overlay:
            overlay = draw_overlay(rgb, labels, prediction.instances, result.ids, result.boxes)
            overlay_pub.publish(array_to_image_msg(overlay, "rgb8", header))

    # ------------------------------------------------------------------ service
    def _on_segment(self, request: Segment.Request, response: Segment.Response) -> Segment.Response:
        s = self._settings
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
            self._accept_instruction(instruction, "segment service")
            _, instruction_id, _ = self.instruction.snapshot()
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
        if self._configure_error:
            level, message = ERROR, self._configure_error
        elif not self._active:
            level, message = WARN, f"{state}: not processing frames"
        elif not instruction:
            level, message = WARN, "no instruction"
        elif self.stats.received == 0:
            level, message = WARN, "no frames received"
        else:
            level, message = OK, "segmenting"
        extra = {
            "state": state,
            "instruction": instruction,
            "instruction_id": str(instruction_id),
            "fixed_phrases": ", ".join(fixed),
            "model": str(self._settings["model"]),
            "device": self._segmenter.device if self._segmenter is not None else str(self._settings["device"]),
        }
        device = self._segmenter.device if self._segmenter is not None else None
        array = build_diagnostics(
            f"{self.get_fully_qualified_name()}: segmentation", "instructsam", level, message,
            self.stats, extra, self.get_clock().now().to_msg(), device,
        )
        self._diag_pub.publish(array)


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
    executor = MultiThreadedExecutor(num_threads=4)
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


if __name__ == "__main__":
    sys.exit(main())
