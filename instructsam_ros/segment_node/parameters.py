"""Every parameter of the segment node: default, meaning, when it applies, how it is checked.

One table serves the node (declaration, descriptors, validation at set time), the launch-file
and YAML tests (every parameter they set must be declared here) and the README. Validation
runs when a parameter is set, so `ros2 param set` gets a clear refusal instead of a node that
fails later.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from instructsam_core.tokens import MAX_INSTRUCTION_CHARS  # one limit for the CLI and the node
from instructsam_ros.segment_node.cameras import camera_names_problem

# Limits on fixed phrases, shared by the `phrases` parameter and the Segment service: every
# phrase is a row of the model's batch (10 queries, a mask each), so a request with a thousand
# phrases would hold the model for a minute and grow the process by hundreds of megabytes.
MAX_PHRASES = 32
MAX_PHRASE_CHARS = 200

# When a change takes effect.
START = "start"  # read once when the node starts
LIVE = "live"  # the next frame
CONFIGURE = "configure"  # the next configure transition (model, device, topics, QoS)
ACTIVATE = "activate"  # the next activation (deactivate, activate) or configure: the camera set

RELIABILITY_CHOICES = ("best_effort", "reliable")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
INFERENCE_LAYOUTS = ("release", "trained")  # instructsam_core.configuration.INFERENCE_LAYOUTS
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any
    description: str
    applies: str
    check: Callable[[Any], str | None] | None = None  # returns a reason when the value is bad (lists: the whole list)


def _in_range(low: float, high: float, low_open: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if (value <= low if low_open else value < low) or value > high:
            bracket = "(" if low_open else "["
            return f"must be in {bracket}{low}, {high}]"
        return None

    return check


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _device(value: Any) -> str | None:
    return None if _DEVICE_RE.match(value) else "must be auto, cpu, mps, cuda or cuda:N"


def _inference_layout(value: Any) -> str | None:
    return None if value in ("", *INFERENCE_LAYOUTS) else "must be release, trained, or empty (the model's config.json)"


def _nonempty(value: Any) -> str | None:
    return None if value.strip() else "must not be empty"


def _instruction(value: Any) -> str | None:
    return None if len(value) <= MAX_INSTRUCTION_CHARS else f"is longer than {MAX_INSTRUCTION_CHARS} characters"


def phrase_list_problem(phrases: list[str]) -> str | None:
    """Why a list of fixed phrases is refused (None when it is acceptable)."""
    if len(phrases) > MAX_PHRASES:
        return f"may hold at most {MAX_PHRASES} phrases, got {len(phrases)}"
    if any(not p.strip() for p in phrases):
        return "must not contain empty phrases"
    longest = max((len(p.strip()) for p in phrases), default=0)
    if longest > MAX_PHRASE_CHARS:
        return f"must not contain a phrase longer than {MAX_PHRASE_CHARS} characters (one has {longest})"
    return None


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("autostart", True, "configure and activate on start-up (false: wait for lifecycle transitions)", START),
    ParameterSpec("model", "default", "model directory, or 'default' for the embedded model", CONFIGURE, _nonempty),
    ParameterSpec("sam3_config", "", "directory with SAM3's config.json (sam3 or sam3_video); overrides where SAM3's "
                  "architecture comes from (empty: the model's mask_decoder_model, its sam3/ copy, else the published sizes)",
                  CONFIGURE),
    ParameterSpec("inference_layout", "", "positions and attention masks at inference: release (as the authors' inference "
                  "runs, what their published numbers were measured with), trained (as the weights were trained: M-RoPE, "
                  "causal prompt); empty: the model's config.json (release checkpoints: release; models trained here: trained)",
                  CONFIGURE, _inference_layout),
    ParameterSpec("device", "auto", "auto (cuda when available), cpu, cuda, cuda:N or mps", CONFIGURE, _device),
    ParameterSpec("dtype", "auto", "auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16", CONFIGURE, _choice(DTYPE_CHOICES)),
    ParameterSpec("warmup", True, "run one inference on configure so the first frame is not slow", CONFIGURE),
    ParameterSpec("instruction", "", "instruction to start with; setting it replaces the current instruction", LIVE, _instruction),
    ParameterSpec("phrases", [], "fixed target phrases of the node's instruction: skip generation and segment these (empty: "
                  "generate from the instruction); a camera with its own instruction does not use them", LIVE, phrase_list_problem),
    ParameterSpec("cameras", [], "camera names, each a sub-namespace: [front, wrist] -> front/image, front/segmentation, ... "
                  "(empty: one camera on image, segmentation, ...)", ACTIVATE, camera_names_problem),
    ParameterSpec("max_batch", 4, "most frames (one per camera) in one model call", LIVE, _in_range(1, 64)),
    ParameterSpec("threshold", 0.3, "minimum instance score", LIVE, _in_range(0.0, 1.0)),
    ParameterSpec("max_instances", 100, "most instances per frame (highest scores kept)", LIVE, _in_range(1, 1000)),
    ParameterSpec("max_input_pixels", 4096 * 4096, "frames with more pixels are dropped", LIVE, _in_range(1, 1 << 28)),
    ParameterSpec("max_frame_age", 0.5, "seconds; frames older than this when the model is free are dropped (0: never); "
                  "<camera>.max_frame_age overrides it for one camera", LIVE, _in_range(0.0, 3600.0)),
    ParameterSpec("regenerate_period", 0.0, "seconds after which the phrases are generated again from the current frame (0: only when the instruction changes)", LIVE, _in_range(0.0, 86400.0)),
    ParameterSpec("empty_retry_period", 1.0, "seconds after which an instruction that gave no phrases is generated again (0: never)", LIVE, _in_range(0.0, 86400.0)),
    ParameterSpec("tracking_iou", 0.3, "box IoU needed to keep an instance id from the previous frames", LIVE, _in_range(0.0, 1.0, low_open=True)),
    ParameterSpec("use_compressed", False, "subscribe to image/compressed (sensor_msgs/CompressedImage) instead of image", CONFIGURE),
    ParameterSpec("image_qos_reliability", "best_effort", "input QoS; best_effort matches both kinds of publisher", CONFIGURE, _choice(RELIABILITY_CHOICES)),
    ParameterSpec("image_qos_depth", 1, "input queue depth (1: latest frame only)", CONFIGURE, _in_range(1, 100)),
    ParameterSpec("output_qos_reliability", "reliable", "QoS of segmentation, label_image and overlay", CONFIGURE, _choice(RELIABILITY_CHOICES)),
    ParameterSpec("output_qos_depth", 2, "output queue depth", CONFIGURE, _in_range(1, 100)),
    ParameterSpec("publish_label_image", True, "publish label_image (mono16) while someone subscribes", LIVE),
    ParameterSpec("publish_overlay", True, "publish overlay (rgb8) while someone subscribes", LIVE),
    ParameterSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", CONFIGURE, _in_range(0.05, 3600.0)),
    # 3-D from an aligned depth image (per camera: depth/image and depth/camera_info).
    ParameterSpec("depth", False, "subscribe to each camera's aligned depth image (depth/image, 16UC1 mm or 32FC1 m; "
                  "depth/image/compressedDepth with use_compressed) and depth/camera_info, and give every instance a 3-D "
                  "location; false: no depth topics, the node behaves as without depth", CONFIGURE),
    ParameterSpec("depth_sync_tolerance", 0.02, "seconds; a colour frame pairs with the depth image stamped nearest to it "
                  "within this, else its 3-D part is reported missing", LIVE, _in_range(0.0, 10.0)),
    ParameterSpec("depth_queue_size", 10, "depth images kept per camera for pairing (cover the model's time at the depth "
                  "rate)", LIVE, _in_range(1, 100)),
    ParameterSpec("max_depth", 10.0, "metres; depth readings beyond this are invalid (as are 0, NaN, inf)", LIVE,
                  _in_range(0.0, 1000.0, low_open=True)),
    ParameterSpec("depth_min_valid_pixels", 20, "fewer valid depth readings under a mask: its location is flagged "
                  "TOO_FEW_VALID and not reported", LIVE, _in_range(1, 1 << 24)),
    ParameterSpec("depth_min_valid_fraction", 0.5, "share of a mask's interior (the mask less a 2-pixel rim, where "
                  "spill lies) that must hold valid depth readings; less: TOO_FEW_VALID, so an object the sensor "
                  "cannot see never takes the depth of what lies around it", LIVE, _in_range(0.0, 1.0)),
    ParameterSpec("depth_inlier_band", 0.05, "metres; the outlier rule keeps depths within max(3 x 1.4826 x MAD, this) "
                  "of the median depth of the mask's interior", LIVE, _in_range(0.0, 100.0)),
    ParameterSpec("publish_instance_points", True, "publish instance_points (PointCloud2 of every located instance's "
                  "points, field instance_id) while someone subscribes", LIVE),
)
PARAMETER_NAMES = frozenset(spec.name for spec in PARAMETERS)

# Parameters of each camera listed in `cameras`, declared as <camera>.<name> while the camera
# exists (e.g. `-p wrist.max_frame_age:=0.2`, or `wrist: {max_frame_age: 0.2}` in YAML).
FOLLOW_NODE = -1.0


def _camera_max_frame_age(value: Any) -> str | None:
    if value == FOLLOW_NODE or 0.0 <= value <= 3600.0:
        return None
    return f"must be in [0.0, 3600.0], or {FOLLOW_NODE} for the node's max_frame_age"


CAMERA_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("max_frame_age", FOLLOW_NODE, "seconds; this camera's frames older than this when the model is free are "
                  f"dropped (0: never; {FOLLOW_NODE}: the node's max_frame_age)", LIVE, _camera_max_frame_age),
    ParameterSpec("instruction", "", "this camera's own instruction, in place before its first frame; setting it replaces "
                  "the camera's instruction (empty: follow the node's until one arrives on <camera>/instruction)", LIVE,
                  _instruction),
)
CAMERA_PARAMETER_NAMES = frozenset(spec.name for spec in CAMERA_PARAMETERS)


def spec(name: str) -> ParameterSpec:
    for entry in PARAMETERS:
        if entry.name == name:
            return entry
    raise KeyError(name)


def camera_spec(name: str) -> ParameterSpec:
    for entry in CAMERA_PARAMETERS:
        if entry.name == name:
            return entry
    raise KeyError(name)


def validate(name: str, value: Any, entry: ParameterSpec | None = None) -> str | None:
    """None when `value` is acceptable for parameter `name`, else a one-line reason.

    `entry` is the parameter's spec when it is not a node parameter (a camera's, whose full
    name is `name`)."""
    entry = spec(name) if entry is None else entry
    expected = type(entry.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is list:
        if not isinstance(value, str) and hasattr(value, "__len__") and len(value) == 0:
            return None  # an empty list of any element type (YAML `[]` has none)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return f"{name} must be a list of strings"
        reason = entry.check(list(value)) if entry.check is not None else None
        return f"{name} {reason}" if reason else None
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return f"{name} must be of type {expected.__name__}, got {type(value).__name__}"
    if expected is float and not math.isfinite(value):
        # NaN passes every range comparison (all are False), so it is refused by name.
        return f"{name} must be a finite number, got {value}"
    if entry.check is None:
        return None
    reason = entry.check(value)
    return f"{name} {reason}" if reason else None


def unset_as_default(name: str, value: Any) -> Any:
    """A start-up value as the table types it: a list parameter ROS left unset (None) is its
    default, the empty list. ROS's parameter-file reader gives an empty YAML list (`phrases: []`)
    no type, so the node receives it unset, which means what it says: no entries."""
    entry = spec(name)
    return list(entry.default) if value is None and isinstance(entry.default, list) else value


def launch_value(name: str, text: str) -> Any:
    """A launch argument's text as the value of parameter `name`, checked as the node checks it;
    ValueError in one line otherwise.

    Booleans and numbers are read with YAML rules, as ROS reads `-p name:=text` and as
    launch_ros would pass them on (`true`, `0.4`, `.nan`); strings stay the text as given."""
    entry = spec(name)
    value: Any = text
    if not isinstance(entry.default, str):
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if isinstance(entry.default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
    reason = validate(name, value)
    if reason:
        raise ValueError(f"launch argument {name}:={text!r} refused: {reason}")
    return value


def clean_phrases(value: Any) -> list[str]:
    """The `phrases` parameter, trimmed (an empty list: generate phrases from the instruction)."""
    return [p.strip() for p in (value or [])]
