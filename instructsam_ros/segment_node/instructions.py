"""Instructions: the node's, and each named camera's own, from topics, parameters and the service.

Instructions are accepted in every state, so one published before the node is configured (or
even started: transient local) applies as soon as frames flow. Each instruction topic has two
subscriptions (`subscribe_instructions`): a volatile one matches every publisher (default-QoS
tools such as `ros2 topic pub` included); a transient-local one also gets the instruction
latched by a publisher started earlier. A message from a transient-local publisher reaches both
and is applied once (`RecentMessages`). One id sequence numbers the node's instruction and every
camera's own.

`InstructionHandling` is part of SegmentNode (a mixin of node.py): it owns `instruction`,
`_camera_instructions`, `_instruction_ids` and `_recent_instructions` (created by the node), and
reports refusals through `problems` and the `stats` of the node and of the camera's stream.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from rclpy.event_handler import SubscriptionEventCallbacks
from std_msgs.msg import String

from instructsam_ros.dds.qos import instruction_qos, live_instruction_qos
from instructsam_ros.segment_node.cameras import DEFAULT_CAMERA
from instructsam_ros.segment_node.segmenter import BadInstructionError, InstructionState


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


def instruction_key(msg: String, info: dict) -> tuple:
    """One sample has the same source timestamp, sequence number and writer on both instruction
    subscriptions; two publications of the same text differ in those."""
    return (msg.data, info.get("source_timestamp"), info.get("publication_sequence_number"), repr(info.get("publisher_gid")))


def subscribe_instructions(node, topic: str, callback: Callable[[String, dict], None], group) -> list[Any]:
    """The two subscriptions of an instruction topic: volatile (matches every publisher) and
    transient local (also gets the instruction latched by a publisher started earlier; its
    "incompatible QoS" reports about volatile publishers are expected and silenced)."""
    return [
        node.create_subscription(String, topic, callback, live_instruction_qos(), callback_group=group),
        node.create_subscription(String, topic, callback, instruction_qos(), callback_group=group,
                                 event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda event: None)),
    ]


class InstructionHandling:
    """The node's instruction handling (see the module docstring)."""

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

    def _on_camera_instruction(self, stream, text: str) -> None:
        """A named camera's own instruction topic (`stream` is its CameraStream)."""
        self._accept_instruction(text, "instruction topic", stream.name)
