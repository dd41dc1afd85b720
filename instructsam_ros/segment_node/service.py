"""The `segment` service (instructsam_ros/Segment): one image + instruction (+ phrases, + camera)
-> InstanceSegmentation, beside the streams and on the same model.

An empty `instruction` means the current one (of `camera` when given, else the node's);
`set_as_current` also makes it the current one; the `phrases` parameter's limits apply. Every
refusal is `success: false` with the reason in `message`; a failed request never takes the node
down. The service takes no depth image: its results are DEPTH_DISABLED.

`SegmentService` is part of SegmentNode (a mixin of node.py): it reads `_settings`, `_streams`,
`_segmenter`, `_active`, `_configure_error` and `instruction`, and sets instructions through
`_accept_instruction` (instructions.py).
"""
from __future__ import annotations

import time

from instructsam_core.errors import UserError
from instructsam_ros.interfaces import Segment
from instructsam_ros.messages.images import image_msg_to_rgb
from instructsam_ros.messages.instances import prediction_to_msg
from instructsam_ros.segment_node.parameters import phrase_list_problem
from instructsam_ros.segment_node.segmenter import BadInstructionError, clean_instruction


class SegmentService:
    """The node's Segment service (see the module docstring)."""

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
