"""The segment node's parameters at work: declared from the table (parameters.py) with their
descriptors, validated when set (`ros2 param set` gets the reason, a bad start-up value keeps the
default, said so), the per-camera `<camera>.*` parameters declared while their camera exists,
and what a change does at once (instruction, fixed phrases, tracking IoU).

`ParameterHandling` is part of SegmentNode (a mixin of node.py): it owns `_settings` (the node's
parameters by name) and `_camera_settings` (camera -> its own values), and calls
`_accept_instruction` (instructions.py) for the instruction parameters.
"""
from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterValueException
from rclpy.parameter import Parameter

from instructsam_ros.segment_node.camera_stream import CameraStream
from instructsam_ros.segment_node.cameras import camera_parameter, split_camera_parameter
from instructsam_ros.segment_node.parameters import (
    ACTIVATE,
    CAMERA_PARAMETER_NAMES,
    CAMERA_PARAMETERS,
    CONFIGURE,
    FOLLOW_NODE,
    PARAMETERS,
    camera_spec,
    clean_phrases,
    spec,
    unset_as_default,
    validate,
)


class ParameterHandling:
    """The node's parameter handling (see the module docstring)."""

    def _declare_parameters(self) -> None:
        """Declare every node parameter and watch changes (at construction, before anything reads them)."""
        self._settings: dict[str, Any] = {}
        for entry in PARAMETERS:
            # Dynamic typing: the type is checked by `validate` with a readable reason, and an
            # integer works for a float parameter (`-p threshold:=1`), which rclpy would refuse.
            declared = self.declare_parameter(entry.name, entry.default, self._descriptor(entry)).value
            value = unset_as_default(entry.name, declared)
            if value is not declared:  # `phrases: []` in a parameter file: set, so it reads as []
                self.set_parameters([Parameter(entry.name, value=value)])
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

    @staticmethod
    def _descriptor(entry) -> ParameterDescriptor:
        return ParameterDescriptor(description=f"{entry.description} (applies: {entry.applies})", dynamic_typing=True)

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
