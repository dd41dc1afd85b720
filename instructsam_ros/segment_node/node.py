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
dropped, counted per camera, and reported in a warning rate-limited per camera and reason.
SIGINT/SIGTERM stop the process within a bounded time (process.py).

The class is put together from its parts, one module each: parameters (node_parameters.py),
instructions (instructions.py), the inference worker and its batches (worker.py), the Segment
service (service.py) and /diagnostics (status.py); this module holds the state they share, the
lifecycle transitions and the camera set (one `CameraStream` per camera).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.utilities import get_rmw_implementation_identifier

from instructsam_ros.dds.profiles import first_frame_warning, frame_limit_report
from instructsam_ros.interfaces import Segment
from instructsam_ros.segment_node.camera_stream import CameraStream, Frame
from instructsam_ros.segment_node.cameras import camera_list
from instructsam_ros.segment_node.diagnostics import ProblemLog, StreamStats
from instructsam_ros.segment_node.frame_slot import LatestSlots
from instructsam_ros.segment_node.instructions import InstructionHandling, RecentMessages, subscribe_instructions
from instructsam_ros.segment_node.node_parameters import ParameterHandling
from instructsam_ros.segment_node.parameters import clean_phrases
from instructsam_ros.segment_node.segmenter import DeviceUnavailableError, InstructionCounter, InstructionState, Segmenter, load_segmenter
from instructsam_ros.segment_node.service import SegmentService
from instructsam_ros.segment_node.status import NodeDiagnostics
from instructsam_ros.segment_node.worker import InferenceWorker

NODE_NAME = "segment_node"


class SegmentNode(ParameterHandling, InstructionHandling, InferenceWorker, SegmentService, NodeDiagnostics,
                  LifecycleNode):
    """The InstructSAM lifecycle node; see the module docstring for its interface and parts."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()  # node_parameters.py

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

        # The node's instruction topic, in every state: two subscriptions, each message applied
        # once (instructions.py says why).
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

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        s = self._settings
        self.get_logger().info(f"loading model {s['model']!r} on {s['device']} ...")
        start = time.perf_counter()
        try:
            segmenter, warmup_s = load_segmenter(s["model"], s["device"], s["dtype"], float(s["threshold"]), bool(s["warmup"]),
                                                 s["sam3_config"], s["inference_layout"])
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
        queue_warning = first_frame_warning(os.environ, get_rmw_implementation_identifier())
        if queue_warning:
            self.get_logger().warning(queue_warning)
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
