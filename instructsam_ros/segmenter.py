"""The model side of the node, free of ROS: instruction state, phrase cache, ids, model lock.

Streaming cost is dominated by generation (the VLM decoding the target phrases token by
token). The phrases an instruction refers to rarely change from one frame to the next, so a
new instruction is generated once and later frames reuse its phrases through the predictor's
single-forward path (no decoding loop). Generation runs again only when asked for
(`regenerate_period`), or, for an instruction that gave no phrases, after
`empty_retry_period` (the target may have come into view).
"""
from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from instructsam_core.errors import UserError
from instructsam_core.instances import Instance, Prediction
from instructsam_ros.mask_layout import int_box
from instructsam_ros.parameters import MAX_INSTRUCTION_CHARS
from instructsam_ros.tracking import InstanceTracker, sequential_ids


class BadInstructionError(UserError):
    """An instruction the node refuses; `kind` is "empty_instruction" or "long_instruction"."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class DeviceUnavailableError(UserError):
    """The `device` parameter names a device this machine does not have."""


def clean_instruction(text: str) -> str:
    """The instruction as used (trimmed), or BadInstructionError naming the problem."""
    cleaned = text.strip()
    if not cleaned:
        raise BadInstructionError("empty instruction ignored", "empty_instruction")
    if len(cleaned) > MAX_INSTRUCTION_CHARS:
        raise BadInstructionError(
            f"instruction of {len(cleaned)} characters ignored (at most {MAX_INSTRUCTION_CHARS})", "long_instruction"
        )
    return cleaned


@dataclass
class InstructionState:
    """The node's current instruction; every accepted instruction gets the next id."""

    text: str = ""
    instruction_id: int = 0
    fixed_phrases: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, text: str) -> tuple[str, int]:
        cleaned = clean_instruction(text)
        with self._lock:
            self.text = cleaned
            self.instruction_id += 1
            return self.text, self.instruction_id

    def set_fixed_phrases(self, phrases: list[str]) -> None:
        with self._lock:
            self.fixed_phrases = list(phrases)

    def snapshot(self) -> tuple[str, int, list[str]]:
        with self._lock:
            return self.text, self.instruction_id, list(self.fixed_phrases)


@dataclass
class SegmentResult:
    prediction: Prediction
    ids: list[int]
    boxes: list[tuple[int, int, int, int]]
    instruction_id: int
    model_latency: float
    generated: bool  # True when this frame ran the generation path


def _int_box(instance: Instance, height: int, width: int) -> tuple[int, int, int, int]:
    """The instance's tight box as integer pixels, clipped to the frame (mask_layout.int_box)."""
    return int_box(instance.box, height, width)


class Segmenter:
    """Wraps a loaded Predictor for the node; one model call at a time (stream or service)."""

    def __init__(self, predictor, device: str) -> None:
        self.predictor = predictor
        self.device = device
        self.tracker = InstanceTracker()
        self._model_lock = threading.Lock()
        self._cache_id: int | None = None
        self._cached_phrases: list[str] | None = None
        self._generated_at = 0.0

    def forget_phrases(self) -> None:
        """Generate again on the next frame (e.g. after a model reload)."""
        self._cache_id = None
        self._cached_phrases = None

    def _needs_generation(self, instruction_id: int, now: float, regenerate_period: float, empty_retry_period: float) -> bool:
        if self._cached_phrases is None or self._cache_id != instruction_id:
            return True
        age = now - self._generated_at
        if regenerate_period > 0 and age >= regenerate_period:
            return True
        return not self._cached_phrases and empty_retry_period > 0 and age >= empty_retry_period

    def _finish(self, prediction: Prediction, max_instances: int, ids_from_tracker: bool) -> tuple[list[int], list[tuple[int, int, int, int]]]:
        prediction.instances = prediction.instances[:max_instances]
        height, width = prediction.image_size
        boxes = [_int_box(inst, height, width) for inst in prediction.instances]
        if ids_from_tracker:
            ids = self.tracker.assign([inst.phrase for inst in prediction.instances], boxes)
        else:
            ids = sequential_ids(len(prediction.instances))
        return ids, boxes

    def segment_stream(
        self,
        rgb: np.ndarray,
        instruction: str,
        instruction_id: int,
        fixed_phrases: list[str],
        threshold: float,
        max_instances: int,
        regenerate_period: float = 0.0,
        empty_retry_period: float = 1.0,
        admit: Callable[[], bool] | None = None,
    ) -> SegmentResult | None:
        """One streaming frame: fixed phrases, cached phrases, or generation when needed.

        `admit` is asked once the model is free (a service call may have held it for a long
        time): when it returns False the frame is not processed and None is returned.
        """
        with self._model_lock:
            if admit is not None and not admit():
                return None
            now = time.monotonic()
            generated = False
            start = time.perf_counter()
            if fixed_phrases:
                prediction = self.predictor.predict(rgb, instruction, phrases=fixed_phrases, threshold=threshold)
            elif self._needs_generation(instruction_id, now, regenerate_period, empty_retry_period):
                prediction = self.predictor.predict(rgb, instruction, threshold=threshold)
                self._cache_id = instruction_id
                self._cached_phrases = list(prediction.phrases)
                self._generated_at = now
                generated = True
            elif self._cached_phrases:
                prediction = self.predictor.predict(rgb, instruction, phrases=self._cached_phrases, threshold=threshold)
            else:
                # The instruction refers to nothing (until the next retry): no model call.
                prediction = Prediction(instruction=instruction, phrases=[], instances=[], image_size=rgb.shape[:2])
            latency = time.perf_counter() - start
            ids, boxes = self._finish(prediction, max_instances, ids_from_tracker=True)
        return SegmentResult(prediction, ids, boxes, instruction_id, latency, generated)

    def segment_once(
        self,
        rgb: np.ndarray,
        instruction: str,
        phrases: list[str] | None,
        threshold: float,
        max_instances: int,
        instruction_id: int = 0,
    ) -> SegmentResult:
        """A one-shot request: no phrase cache, no tracking (ids 1..N by score)."""
        with self._model_lock:
            start = time.perf_counter()
            prediction = self.predictor.predict(rgb, instruction, phrases=phrases or None, threshold=threshold)
            latency = time.perf_counter() - start
            ids, boxes = self._finish(prediction, max_instances, ids_from_tracker=False)
        return SegmentResult(prediction, ids, boxes, instruction_id, latency, phrases is None)

    def warm_up(self) -> float:
        """Run both paths once on a small frame so the first real frame is not slow."""
        frame = np.full((64, 96, 3), 127, dtype=np.uint8)
        start = time.perf_counter()
        with self._model_lock:
            # A few decoding steps warm the generation path; the rest of a long answer would
            # only repeat them.
            limit = getattr(self.predictor, "max_new_tokens", None)
            if limit is not None:
                self.predictor.max_new_tokens = min(limit, 8)
            try:
                self.predictor.predict(frame, "which objects are in this image?")
            finally:
                if limit is not None:
                    self.predictor.max_new_tokens = limit
            self.predictor.predict(frame, "segment every object", phrases=["object"])
        return time.perf_counter() - start

    def release(self) -> None:
        """Drop the model and give its memory back (GPU memory included)."""
        with self._model_lock:
            self.predictor = None
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu; a device this machine lacks is refused by name.

    Checked before the model is built, so that a wrong `device` is reported as such and not as
    a model that failed to load.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
            raise DeviceUnavailableError(f"device {device!r} is not available: this machine has no usable CUDA device ({build})")
        count = torch.cuda.device_count()
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= count:
            names = ", ".join(f"cuda:{i}" for i in range(count))
            raise DeviceUnavailableError(f"device {device!r} does not exist: this machine has {count} CUDA device(s): {names}")
    elif device == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise DeviceUnavailableError("device 'mps' is not available on this machine")
    return device


def load_segmenter(
    model: str, device: str, dtype: str, threshold: float, warmup: bool, sam3_config: str = ""
) -> tuple[Segmenter, float]:
    """Load the predictor (UserError for a bad model directory) and optionally warm it up;
    `sam3_config` (a directory, or empty) overrides where SAM3's architecture comes from."""
    import torch

    from instructsam_core.predictor import Predictor

    resolved = resolve_device(device)
    torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
    # max_instances is applied per frame by the node (a live parameter), so load with the
    # largest value the parameter allows.
    predictor = Predictor.from_pretrained(model, device=resolved, dtype=torch_dtype, threshold=threshold, max_instances=1000,
                                          sam3_config=sam3_config or None)
    segmenter = Segmenter(predictor, resolved)
    warmup_s = segmenter.warm_up() if warmup else 0.0
    return segmenter, warmup_s
