"""The model side of the node, free of ROS: instruction state, phrase caches, ids, model lock.

Streaming cost is dominated by generation (the VLM decoding the target phrases token by
token). The phrases an instruction refers to rarely change from one frame to the next, so a
new instruction is generated once and later frames reuse its phrases through the predictor's
single-forward path (no decoding loop). Generation runs again only when asked for
(`regenerate_period`), or, for an instruction that gave no phrases, after
`empty_retry_period` (the target may have come into view).

Several cameras share one model: `segment_batch` takes the newest frame of each camera and
runs them in one `Predictor.predict_batch` call (frames whose phrases are known share one
prefill batch and one SAM3 image-encoder batch). Each camera brings its own phrase cache (its
phrases are generated from its own frames: what one camera sees says nothing about another's
view) and its own tracker (ids of one camera never depend on another's instances).
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
from instructsam_ros.messages.mask_layout import int_box
from instructsam_ros.segment_node.parameters import MAX_INSTRUCTION_CHARS
from instructsam_ros.messages.tracking import InstanceTracker, sequential_ids


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


class InstructionCounter:
    """One sequence of instruction ids for a node: its own instruction's and every camera's.

    A result's instruction_id then names one instruction of the node, whichever camera or
    topic it came from.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last += 1
            return self._last


@dataclass
class InstructionState:
    """A current instruction (the node's, or a camera's own); every accepted instruction gets
    the next id, from `counter` when several states share one sequence."""

    text: str = ""
    instruction_id: int = 0
    fixed_phrases: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    counter: InstructionCounter | None = field(default=None, repr=False)

    def set(self, text: str) -> tuple[str, int]:
        cleaned = clean_instruction(text)
        with self._lock:
            self.text = cleaned
            self.instruction_id = self.counter.next() if self.counter is not None else self.instruction_id + 1
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
    model_latency: float  # seconds of the model call this frame was part of (a batch: the whole call)
    generated: bool  # True when this frame ran the generation path
    batch_size: int = 1  # frames in that model call


@dataclass
class PhraseCache:
    """The phrases one stream's instruction gave, generated from that stream's frames."""

    instruction_id: int | None = None
    phrases: list[str] | None = None
    generated_at: float = 0.0

    def forget(self) -> None:
        """Generate again on the next frame (a new model, a camera added again)."""
        self.instruction_id = None
        self.phrases = None

    def needs_generation(self, instruction_id: int, now: float, regenerate_period: float, empty_retry_period: float) -> bool:
        if self.phrases is None or self.instruction_id != instruction_id:
            return True
        age = now - self.generated_at
        if regenerate_period > 0 and age >= regenerate_period:
            return True
        return not self.phrases and empty_retry_period > 0 and age >= empty_retry_period

    def store(self, instruction_id: int, phrases: list[str], now: float) -> None:
        self.instruction_id = instruction_id
        self.phrases = list(phrases)
        self.generated_at = now


@dataclass
class StreamRequest:
    """One camera's frame for `Segmenter.segment_batch`, with that camera's state."""

    rgb: np.ndarray
    instruction: str
    instruction_id: int
    fixed_phrases: list[str]
    cache: PhraseCache
    tracker: InstanceTracker
    # Asked once the model is free (a service call or a batch may have held it): False drops
    # the frame without running it.
    admit: Callable[[], bool] | None = None


# What became of each request of a batch: its result, None (not admitted), or the error the
# model raised on this frame alone.
Outcome = SegmentResult | BaseException | None


def _int_box(instance: Instance, height: int, width: int) -> tuple[int, int, int, int]:
    """The instance's tight box as integer pixels, clipped to the frame (mask_layout.int_box)."""
    return int_box(instance.box, height, width)


class Segmenter:
    """Wraps a loaded Predictor for the node; one model call at a time (stream or service)."""

    def __init__(self, predictor, device: str) -> None:
        self.predictor = predictor
        self.device = device
        # The phrase cache and tracker of `segment_stream` (one stream); `segment_batch` takes
        # each stream's own.
        self.tracker = InstanceTracker()
        self.phrase_cache = PhraseCache()
        self._model_lock = threading.Lock()

    def forget_phrases(self) -> None:
        """Generate again on the next frame of `segment_stream` (e.g. after a model reload)."""
        self.phrase_cache.forget()

    def _finish(self, prediction: Prediction, max_instances: int, tracker: InstanceTracker | None) -> tuple[list[int], list[tuple[int, int, int, int]]]:
        prediction.instances = prediction.instances[:max_instances]
        height, width = prediction.image_size
        boxes = [_int_box(inst, height, width) for inst in prediction.instances]
        if tracker is not None:
            ids = tracker.assign([inst.phrase for inst in prediction.instances], boxes)
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
        request = StreamRequest(rgb, instruction, instruction_id, list(fixed_phrases), self.phrase_cache, self.tracker, admit)
        outcome = self.segment_batch([request], threshold, max_instances, regenerate_period, empty_retry_period)[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def segment_batch(
        self,
        requests: list[StreamRequest],
        threshold: float,
        max_instances: int,
        regenerate_period: float = 0.0,
        empty_retry_period: float = 1.0,
    ) -> list[Outcome]:
        """Frames of several streams in one model call; one outcome per request, in order.

        Under the model lock: each request's `admit` is asked; each admitted frame takes its
        fixed phrases, its stream's cached phrases, or generation; every frame that needs the
        model goes into one `predict_batch` call (a frame whose instruction gave no phrases
        needs none). Ids come from each request's own tracker. Should the batched call fail,
        each frame is run alone, so a frame the model cannot take costs only its own result.
        """
        outcomes: list[Outcome] = [None] * len(requests)
        with self._model_lock:
            admitted = [i for i, r in enumerate(requests) if r.admit is None or r.admit()]
            now = time.monotonic()
            plans: dict[int, tuple[str, list[str] | None]] = {}
            for i in admitted:
                r = requests[i]
                if r.fixed_phrases:
                    plans[i] = ("fixed", list(r.fixed_phrases))
                elif r.cache.needs_generation(r.instruction_id, now, regenerate_period, empty_retry_period):
                    plans[i] = ("generate", None)
                elif r.cache.phrases:
                    plans[i] = ("cached", list(r.cache.phrases))
                else:
                    plans[i] = ("nothing", [])  # the instruction refers to nothing (until the next retry)
            calls = [i for i in admitted if plans[i][0] != "nothing"]
            start = time.perf_counter()
            predictions = dict(zip(calls, self._predict_all([requests[i] for i in calls], [plans[i][1] for i in calls], threshold)))
            latency = time.perf_counter() - start
            for i in admitted:
                r = requests[i]
                kind = plans[i][0]
                if kind == "nothing":
                    prediction: Prediction | BaseException = Prediction(
                        instruction=r.instruction, phrases=[], instances=[], image_size=r.rgb.shape[:2])
                else:
                    prediction = predictions[i]
                if isinstance(prediction, BaseException):
                    outcomes[i] = prediction
                    continue
                if kind == "generate":
                    r.cache.store(r.instruction_id, prediction.phrases, now)
                ids, boxes = self._finish(prediction, max_instances, r.tracker)
                outcomes[i] = SegmentResult(prediction, ids, boxes, r.instruction_id, latency if kind != "nothing" else 0.0,
                                            kind == "generate", len(calls))
        return outcomes

    def _predict_all(self, requests: list[StreamRequest], phrase_lists: list[list[str] | None], threshold: float) -> list[Prediction | BaseException]:
        """One predict_batch call; if it fails, each frame alone (its error kept as its outcome)."""
        if not requests:
            return []
        try:
            return self.predictor.predict_batch([r.rgb for r in requests], [r.instruction for r in requests], phrase_lists,
                                                threshold=threshold)
        except Exception as error:  # noqa: BLE001 - reported per frame by the caller
            if len(requests) == 1:
                return [error]
        outcomes: list[Prediction | BaseException] = []
        for r, phrases in zip(requests, phrase_lists):
            try:
                outcomes.append(self.predictor.predict(r.rgb, r.instruction, phrases=phrases, threshold=threshold))
            except Exception as error:  # noqa: BLE001
                outcomes.append(error)
        return outcomes

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
            ids, boxes = self._finish(prediction, max_instances, tracker=None)
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
    model: str, device: str, dtype: str, threshold: float, warmup: bool, sam3_config: str = "",
    inference_layout: str = "",
) -> tuple[Segmenter, float]:
    """Load the predictor (UserError for a bad model directory) and optionally warm it up;
    `sam3_config` (a directory, or empty) overrides where SAM3's architecture comes from,
    `inference_layout` ("release", "trained", or empty) the config's inference layout."""
    import torch

    from instructsam_core.predictor import Predictor

    resolved = resolve_device(device)
    torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
    # max_instances is applied per frame by the node (a live parameter), so load with the
    # largest value the parameter allows.
    predictor = Predictor.from_pretrained(model, device=resolved, dtype=torch_dtype, threshold=threshold, max_instances=1000,
                                          sam3_config=sam3_config or None, inference_layout=inference_layout or None)
    segmenter = Segmenter(predictor, resolved)
    warmup_s = segmenter.warm_up() if warmup else 0.0
    return segmenter, warmup_s
