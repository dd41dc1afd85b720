"""Camera names of a segment node, without ROS: the naming rule, topic names, launch arguments.

A node serves the cameras its `cameras` parameter lists. Each name is a relative
sub-namespace of the node: camera `front` reads `front/image` and publishes
`front/segmentation`, `front/label_image`, `front/overlay`, so the node's namespace and
remaps apply to every camera. No camera listed (the default) means one camera without a
sub-namespace: `image`, `segmentation`, ... exactly as a node of one camera always had.

A name is one ROS name token (letters, digits and underscores, starting with a letter, no
double underscore), because it also names the camera's own parameters
(`<camera>.max_frame_age`), where a slash would not be a valid parameter name.
"""
from __future__ import annotations

import re

# The single camera of a node whose `cameras` parameter is empty: no sub-namespace.
DEFAULT_CAMERA = ""
# More cameras than this in one node is more likely a mistake than a robot; every camera costs
# subscriptions, publishers and a share of each batch.
MAX_CAMERAS = 16
MAX_CAMERA_NAME_CHARS = 64
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# Per-camera parameters are named <camera>.<parameter> (parameters.CAMERA_PARAMETERS).
CAMERA_PARAMETER_SEPARATOR = "."


def camera_name_problem(name: object) -> str | None:
    """Why `name` cannot name a camera (None when it can)."""
    if not isinstance(name, str):
        return f"camera names must be strings, got {type(name).__name__}"
    if not name:
        return "camera names must not be empty (list no camera for the node's own topics)"
    if len(name) > MAX_CAMERA_NAME_CHARS:
        return f"camera name {name[:20]!r}... is longer than {MAX_CAMERA_NAME_CHARS} characters"
    if not _NAME_RE.match(name) or "__" in name:
        return (f"{name!r} is not a camera name: letters, digits and underscores, starting with a "
                "letter, no double underscore (it becomes a sub-namespace: <camera>/image)")
    return None


def camera_names_problem(names: list[str]) -> str | None:
    """Why a `cameras` list is refused (None when it is acceptable)."""
    if len(names) > MAX_CAMERAS:
        return f"may list at most {MAX_CAMERAS} cameras, got {len(names)}"
    seen: set[str] = set()
    for name in names:
        problem = camera_name_problem(name)
        if problem:
            return f"has a bad entry: {problem}"
        if name in seen:
            return f"lists {name!r} twice"
        seen.add(name)
    return None


def camera_list(names: list[str] | tuple[str, ...]) -> list[str]:
    """The cameras a node serves for its `cameras` parameter: the names, or the default camera."""
    return list(names) if names else [DEFAULT_CAMERA]


def camera_topic(camera: str, name: str) -> str:
    """The relative topic `name` of `camera` (`front`, `image` -> `front/image`)."""
    return f"{camera}/{name}" if camera else name


def camera_label(camera: str) -> str:
    """How logs and diagnostics name a camera."""
    return f"camera {camera}" if camera else "camera"


def camera_parameter(camera: str, name: str) -> str:
    """The name of a per-camera parameter (`front`, `max_frame_age` -> `front.max_frame_age`)."""
    return f"{camera}{CAMERA_PARAMETER_SEPARATOR}{name}"


def split_camera_parameter(parameter: str) -> tuple[str, str] | None:
    """(camera, name) of a per-camera parameter name, or None for a node parameter."""
    camera, sep, name = parameter.partition(CAMERA_PARAMETER_SEPARATOR)
    if not sep or camera_name_problem(camera) is not None:
        return None
    return camera, name


# ----------------------------------------------------------------------------- launch arguments
def parse_camera_argument(text: str) -> list[str]:
    """A launch argument listing cameras: `front,wrist`, `front wrist` or `[front, wrist]`.

    Empty (or `[]`) is the default single camera. Raises ValueError naming the problem.
    """
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    names = [part.strip().strip("'\"") for part in re.split(r"[,\s]+", body) if part.strip()]
    problem = camera_names_problem(names)
    if problem:
        raise ValueError(f"cameras {problem}")
    return names


def image_remappings(cameras: list[str], images_text: str, image: str) -> list[tuple[str, str]]:
    """Remappings of the cameras' image topics for the launch file.

    `image` remaps the single default camera's `image` (and `image/compressed`), as before.
    With cameras, `images_text` lists one source topic per camera in the same order (same
    syntax as the camera list; empty: no remapping, each camera reads `<camera>/image`).
    """
    if not cameras:
        return [("image", image), ("image/compressed", f"{image}/compressed")]
    body = images_text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    sources = [part.strip().strip("'\"") for part in re.split(r"[,\s]+", body) if part.strip()]
    if not sources:
        return []
    if len(sources) != len(cameras):
        raise ValueError(f"images lists {len(sources)} topics for {len(cameras)} cameras ({', '.join(cameras)}): give one per camera")
    remaps = []
    for camera, source in zip(cameras, sources):
        remaps += [(camera_topic(camera, "image"), source), (camera_topic(camera, "image/compressed"), f"{source}/compressed")]
    return remaps


def _topic_list(text: str) -> list[str]:
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    return [part.strip().strip("'\"") for part in re.split(r"[,\s]+", body) if part.strip()]


# What `depth:=` means as a boolean (the node parameter `depth` is one); the argument is a topic.
_BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})


def sibling_camera_info(depth_topic: str) -> str:
    """The CameraInfo topic next to an image topic (image_transport's convention):
    /camera/aligned_depth_to_color/image_raw -> /camera/aligned_depth_to_color/camera_info."""
    head, sep, _ = depth_topic.rstrip("/").rpartition("/")
    return f"{head}{sep}camera_info" if sep else "camera_info"


def depth_remappings(cameras: list[str], depth: str, depth_info: str, depths_text: str = "",
                     depth_infos_text: str = "") -> list[tuple[str, str]]:
    """Remappings of the cameras' depth topics for the launch file; empty when depth is not asked for.

    One camera: `depth` is its depth image topic (remaps `depth/image`, and
    `depth/image/compressedDepth` to `<depth>/compressedDepth`), `depth_info` its CameraInfo
    (empty: the camera_info next to `depth`). With cameras, `depths_text` and `depth_infos_text`
    list one topic per camera in the camera order (same syntax as the camera list).
    Raises ValueError naming the problem.
    """
    for argument, text in (("depth", depth), ("depths", depths_text)):
        if text.strip().lower() in _BOOLEAN_WORDS:
            raise ValueError(f"{argument}:={text.strip()} is not a topic: {argument} names the aligned depth image topic "
                             f"(e.g. {argument}:=/camera/aligned_depth_to_color/image_raw) and turns 3-D on; leave it "
                             "empty for none")
    if not cameras:
        if not depth.strip():
            if depth_info.strip():
                raise ValueError("depth_info is set but depth is not: give the depth image topic too (depth:=...)")
            return []
        pairs = [("", depth.strip(), depth_info.strip())]
    else:
        if depth.strip() or depth_info.strip():
            raise ValueError("with cameras, give one depth topic per camera in depths:=... (and depth_infos:=...), "
                             "not depth:=/depth_info:=")
        sources = _topic_list(depths_text)
        infos = _topic_list(depth_infos_text)
        if not sources:
            if infos:
                raise ValueError("depth_infos is set but depths is not: give the depth image topics too")
            return []
        if len(sources) != len(cameras) or (infos and len(infos) != len(cameras)):
            raise ValueError(f"depths lists {len(sources)} and depth_infos {len(infos)} topics for {len(cameras)} cameras "
                             f"({', '.join(cameras)}): give one per camera")
        pairs = [(camera, source, infos[k] if infos else "") for k, (camera, source) in enumerate(zip(cameras, sources))]
    remaps = []
    for camera, source, info in pairs:
        remaps += [
            (camera_topic(camera, "depth/image"), source),
            (camera_topic(camera, "depth/image/compressedDepth"), f"{source}/compressedDepth"),
            (camera_topic(camera, "depth/camera_info"), info or sibling_camera_info(source)),
        ]
    return remaps
