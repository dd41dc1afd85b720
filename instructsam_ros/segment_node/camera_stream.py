"""One camera of a segment node: its topics, instruction, tracker, phrase cache and counters.

A `CameraStream` owns everything of one camera: the image subscription, the camera's own
instruction subscriptions (named cameras), the result publishers, the latest-frame seat in
the node's scheduler (through `submit`), the ids (`tracker`), the phrases generated from its
frames (`phrase_cache`) and its counters (`stats`). Nothing of one camera reaches another's
output: results are published only on the stream whose frame they answer, with that frame's
header and that stream's ids.

With depth (parameter `depth`), the stream also owns the camera's depth input
(`depth.step.DepthInput`: `<camera>/depth/image` or `<camera>/depth/image/compressedDepth`,
and `<camera>/depth/camera_info`). Publishing a frame hands its masks to the 3-D step once, in
the worker thread (`DepthInput.locate_frame`: pairing by stamp, geometry, `Instance.location`
and the frame's depth status filled, the point cloud built) and gets the outcome back; the
stream then publishes `<camera>/instance_points` and `<camera>/instance_markers` (boxes and
labels for RViz and Foxglove, `messages.markers`) while someone subscribes to each.

The node creates streams at configure and when its camera list changes at activation, and
destroys them at cleanup or when a camera is removed; a destroyed stream publishes nothing
(the worker may still hold one of its frames).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from instructsam_ros.segment_node.cameras import camera_label, camera_topic
from instructsam_ros.depth.geometry import DepthSettings
from instructsam_ros.depth.step import DepthInput, DepthOptions, DepthResult
from instructsam_ros.segment_node.diagnostics import FrameTiming, StreamStats
from instructsam_ros.segment_node.instructions import RecentMessages, instruction_key, subscribe_instructions
from instructsam_ros.messages.images import array_to_image_msg
from instructsam_ros.messages.instances import label_image, prediction_to_msg
from instructsam_ros.interfaces import InstanceSegmentation
from instructsam_ros.messages.marker_layout import MarkerSet
from instructsam_ros.messages.markers import frame_markers
from instructsam_ros.messages.overlay import draw_overlay
from instructsam_ros.dds.qos import stream_qos
from instructsam_ros.segment_node.segmenter import InstructionState, PhraseCache, SegmentResult
from instructsam_ros.messages.tracking import InstanceTracker


@dataclass
class Frame:
    msg: Image | CompressedImage
    arrival: float  # monotonic seconds
    stream: "CameraStream"
    depth_held: tuple[int, Any] | None = None  # the nearest depth image when the frame arrived


def depth_options(settings: dict[str, Any], want_points: bool) -> DepthOptions:
    """The node's depth parameters as the 3-D step takes them (read per frame: they apply live)."""
    return DepthOptions(
        sync_tolerance=float(settings["depth_sync_tolerance"]), queue_size=int(settings["depth_queue_size"]),
        max_pixels=int(settings["max_input_pixels"]), want_points=want_points,
        geometry=DepthSettings(float(settings["max_depth"]), int(settings["depth_min_valid_pixels"]),
                               float(settings["depth_inlier_band"]), float(settings["depth_min_valid_fraction"])),
    )


class CameraStream:
    """See the module docstring. `name` is "" for the single default camera (no sub-namespace)."""

    def __init__(
        self,
        node,
        name: str,
        settings: dict[str, Any],
        submit: Callable[["CameraStream", Frame], None],
        node_stats: StreamStats,
        own_instruction: InstructionState | None,
        on_instruction: Callable[["CameraStream", str], None],
        image_group,
        instruction_group,
        tracking_iou: float,
        warn: Callable[["CameraStream", str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.label = camera_label(name)
        self._node = node
        self._submit = submit
        self._lock = threading.Lock()
        self._closed = False
        # The default camera's counters are the node's; a named camera counts in both.
        self.stats = node_stats if not name else StreamStats()
        self._node_stats = node_stats
        self.own_instruction = own_instruction
        self.tracker = InstanceTracker(iou_threshold=tracking_iou)
        self.phrase_cache = PhraseCache()
        self.stamp_warned = False
        self._on_instruction_text = on_instruction
        self._recent_instructions = RecentMessages()
        self._warn = warn  # rate-limited warnings about this camera's input: warn(stream, kind, message)

        # Every attribute a callback reads is set before the first subscription exists: the
        # executor may deliver a message on another thread while this constructor still runs.
        in_qos = stream_qos(settings["image_qos_reliability"], int(settings["image_qos_depth"]))
        out_qos = stream_qos(settings["output_qos_reliability"], int(settings["output_qos_depth"]))
        self._seg_pub = node.create_lifecycle_publisher(InstanceSegmentation, camera_topic(name, "segmentation"), out_qos)
        self._label_pub = node.create_lifecycle_publisher(Image, camera_topic(name, "label_image"), out_qos)
        self._overlay_pub = node.create_lifecycle_publisher(Image, camera_topic(name, "overlay"), out_qos)
        self._publishers = [self._seg_pub, self._label_pub, self._overlay_pub]
        self._subscriptions: list[Any] = []
        self.image_topic = self.instruction_topic = ""

        # Depth: callbacks only queue messages; pairing and the 3-D step run in the worker.
        self.depth: DepthInput | None = None
        self.depth_topic = self.depth_info_topic = ""
        self._points_pub = self._markers_pub = None
        self._markers = MarkerSet()
        if settings["depth"]:
            self.depth = DepthInput(queue_size=int(settings["depth_queue_size"]))
            for stats in {id(self.stats): self.stats, id(node_stats): node_stats}.values():
                stats.depth_enabled = True
            self._points_pub = node.create_lifecycle_publisher(PointCloud2, camera_topic(name, "instance_points"), out_qos)
            self._markers_pub = node.create_lifecycle_publisher(MarkerArray, camera_topic(name, "instance_markers"), out_qos)
            self._publishers += [self._points_pub, self._markers_pub]

        # Subscriptions last (see above).
        if self.depth is not None:
            if settings["use_compressed"]:
                depth_sub = node.create_subscription(CompressedImage, camera_topic(name, "depth/image/compressedDepth"),
                                                     self.depth.on_depth, in_qos, callback_group=image_group)
            else:
                depth_sub = node.create_subscription(Image, camera_topic(name, "depth/image"), self.depth.on_depth, in_qos,
                                                     callback_group=image_group)
            info_sub = node.create_subscription(CameraInfo, camera_topic(name, "depth/camera_info"), self.depth.on_camera_info,
                                                stream_qos(settings["image_qos_reliability"], 1), callback_group=image_group)
            self.depth_topic, self.depth_info_topic = depth_sub.topic_name, info_sub.topic_name
            self._subscriptions += [depth_sub, info_sub]
            node.get_logger().info(f"{self.label + ': ' if name else ''}depth on {self.depth_topic} with "
                                   f"{self.depth_info_topic}; 3-D points on {self._points_pub.topic_name}, markers on "
                                   f"{self._markers_pub.topic_name}")
        if own_instruction is not None:
            subs = subscribe_instructions(node, camera_topic(name, "instruction"), self._on_instruction, instruction_group)
            self.instruction_topic = subs[0].topic_name
            self._subscriptions += subs
        if settings["use_compressed"]:
            self._image_sub = node.create_subscription(
                CompressedImage, camera_topic(name, "image/compressed"), self._on_image, in_qos, callback_group=image_group)
        else:
            self._image_sub = node.create_subscription(Image, camera_topic(name, "image"), self._on_image, in_qos,
                                                       callback_group=image_group)
        self.image_topic = self._image_sub.topic_name
        self._subscriptions.append(self._image_sub)

    # ------------------------------------------------------------------ inputs
    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.count("received")
        frame = Frame(msg, time.monotonic(), self)
        if self.depth is not None:
            frame.depth_held = self.depth.hold(msg.header)
        self._submit(self, frame)

    def _on_instruction(self, msg: String, info: dict) -> None:
        if self._recent_instructions.first_time(instruction_key(msg, info)):
            self._on_instruction_text(self, msg.data)

    def instruction_snapshot(self, node_instruction: InstructionState) -> tuple[str, int, list[str], bool]:
        """(instruction, id, fixed phrases, own): the camera's own instruction once it has one,
        else the node's (with the node's fixed phrases, which belong to the node's instruction)."""
        if self.own_instruction is not None:
            text, instruction_id, _ = self.own_instruction.snapshot()
            if text:
                return text, instruction_id, [], True
        text, instruction_id, fixed = node_instruction.snapshot()
        return text, instruction_id, fixed, False

    # ------------------------------------------------------------------ counters
    def count(self, field: str, problem: str | None = None) -> None:
        self.stats.count(field, problem)
        if self.stats is not self._node_stats:
            self._node_stats.count(field, f"{self.label}: {problem}" if problem else None)

    def record_depth(self, outcome: str, latency: float, problem: str | None = None) -> None:
        self.stats.record_depth(outcome, latency, problem)
        if self.stats is not self._node_stats:
            self._node_stats.record_depth(outcome, latency, f"{self.label}: {problem}" if problem else None)

    def record(self, timing: FrameTiming) -> None:
        self.stats.record(timing)
        if self.stats is not self._node_stats:
            self._node_stats.record(timing)

    # ------------------------------------------------------------------ outputs
    def publish(self, frame: Frame, rgb, result: SegmentResult, instruction: str, settings: dict[str, Any], active: bool) -> bool:
        """Publish the result of `frame` on this camera's topics; False when the stream is gone
        or the node was deactivated meanwhile (nothing is published)."""
        with self._lock:
            if self._closed or not active:
                return False
            header = frame.msg.header
            prediction = result.prediction
            want_label = bool(settings["publish_label_image"]) and self._label_pub.get_subscription_count() > 0
            want_overlay = bool(settings["publish_overlay"]) and self._overlay_pub.get_subscription_count() > 0
            labels = None
            if want_label or want_overlay:
                labels = label_image(prediction.instances, result.ids, rgb.shape[0], rgb.shape[1], result.boxes)
            msg = prediction_to_msg(prediction, result.ids, header, result.instruction_id, result.model_latency, 0.0,
                                    result.boxes, instruction)
            distances = cloud = None
            if self.depth is not None:
                want_points = bool(settings["publish_instance_points"]) and self._points_pub.get_subscription_count() > 0
                depth = self.depth.locate_frame(msg, (rgb.shape[1], rgb.shape[0]), [inst.mask for inst in prediction.instances],
                                                result.boxes, result.ids, frame.depth_held, depth_options(settings, want_points))
                distances, cloud = depth.distances, depth.cloud_msg
                self._record_depth(depth)
            msg.processing_latency = time.monotonic() - frame.arrival
            self._seg_pub.publish(msg)
            if cloud is not None:
                self._points_pub.publish(cloud)
            if self._markers_pub is not None:
                self._publish_markers(msg)
            if want_label:
                self._label_pub.publish(array_to_image_msg(labels, "mono16", header))
            if want_overlay:
                overlay = draw_overlay(rgb, labels, prediction.instances, result.ids, result.boxes, distances=distances)
                self._overlay_pub.publish(array_to_image_msg(overlay, "rgb8", header))
            return True

    def _publish_markers(self, msg: InstanceSegmentation) -> None:
        """The result's boxes and labels, and DELETEs for instances gone, while someone subscribes."""
        if self._markers_pub.get_subscription_count() == 0:
            self._markers.forget()
            return
        markers = frame_markers(msg, self._markers)
        if markers is not None:
            self._markers_pub.publish(markers)

    def _record_depth(self, outcome: DepthResult) -> None:
        """Count the frame's 3-D outcome per cause, time it, and warn (rate-limited) about problems."""
        problem = f"3-D missing: {outcome.problem}" if outcome.problem else None
        self.record_depth(outcome.outcome, outcome.latency, problem)
        if self._warn is not None:
            if problem:
                self._warn(self, f"depth_{outcome.outcome}", problem)
            for note in outcome.warnings:
                self._warn(self, "depth_note", note)

    # ------------------------------------------------------------------ end
    @property
    def closed(self) -> bool:
        return self._closed

    def destroy(self) -> None:
        """Destroy the stream's subscriptions and publishers; it publishes nothing afterwards."""
        with self._lock:
            self._closed = True
            node = self._node
            for sub in self._subscriptions:
                node.destroy_subscription(sub)
            self._subscriptions = []
            if self.depth is not None:
                self.depth.clear()
            for pub in self._publishers:
                node.destroy_lifecycle_publisher(pub) if hasattr(node, "destroy_lifecycle_publisher") else node.destroy_publisher(pub)
