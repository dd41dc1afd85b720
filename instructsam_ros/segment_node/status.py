"""What the node says about itself on /diagnostics: one status for the node (state, instruction,
model, device memory, every camera's frames, the model calls' batch sizes) and one per named
camera (its instruction and where it comes from, its counters), each OK / WARN / ERROR with
the reason a user needs ("inactive", "no instruction", "no frames received", a load error).

`NodeDiagnostics` is part of SegmentNode (a mixin of node.py): the diagnostics timer calls
`_publish_diagnostics`; it reads `_settings`, `_streams`, `_segmenter`, `_active`,
`_configure_error`, `instruction` and `stats`, and `_max_frame_age` (node_parameters.py).
"""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticStatus

from instructsam_ros.segment_node.camera_stream import CameraStream
from instructsam_ros.segment_node.diagnostics import ERROR, OK, WARN, build_diagnostics, build_status


class NodeDiagnostics:
    """The node's /diagnostics (see the module docstring)."""

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
