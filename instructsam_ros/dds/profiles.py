"""The Fast DDS profiles shipped with the package, and the largest image each one carries.

Between processes on one machine, Fast DDS moves messages through shared memory. It cuts a
message into fragments at the smallest maxMessageSize of the participant's transports: with
the UDPv4 transport both profiles carry for other hosts (65,500 bytes), 64 KiB fragments
(`fragments_at_64k`). The shared-memory transport copies each fragment into the sender's
segment and queues it in the receiver's port. A best-effort frame whose fragments do not fit
the segment at once mostly never arrives: nothing is logged anywhere, the node simply sees no
frames. The node therefore says at start-up which profile it runs with and how large an image
that profile carries (`frame_limit_report`).

The first large frame: a reader grows its sample buffer when a frame is larger than every
frame before it, and zero-fills the new part (about 45 ms for a 4000x3000 rgb8 frame on our
machine) in the thread that takes fragments off the port. The sender goes on meanwhile; a port
queues 512 messages by default (31.9 MiB of fragments), the rest are dropped, and best effort
never sends them again: the first 4000x3000 frame after a subscriber connected was always lost
(Fast DDS 2.14 and 3.2). The large-frames profile's ports queue 4096; `first_frame_warning`
names a profile whose queue is smaller than what it carries.

Two profiles ship in `config/`:
  fastdds_large_data.xml    16 MiB messages (16 MiB segment): up to 2560x2048 rgb8. The default:
                            every process that uses it holds its 16 MiB segment in /dev/shm.
  fastdds_large_frames.xml  64 MiB messages (128 MiB segment): 4000x3000 and 4096x2160 rgb8, up
                            to 4096x4096 rgb8. Opt-in, because every process using it holds
                            128 MiB of /dev/shm (container defaults are often 64 MB in all).
Measured delivery and latency of both: BENCHMARKS.md ("Large frames between processes").

Fast DDS 3 (Kilted) reads the profile from FASTDDS_DEFAULT_PROFILES_FILE, Fast DDS 2 (Humble,
Jazzy) only from FASTRTPS_DEFAULT_PROFILES_FILE. Kilted's rmw still reads the old name but warns
that it is deprecated, so the name is chosen per distribution (`profile_variables`).
"""
from __future__ import annotations

import importlib.metadata
import os
import xml.etree.ElementTree as ET
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
DEFAULT_PROFILE = CONFIG_DIR / "fastdds_large_data.xml"
LARGE_FRAMES_PROFILE = CONFIG_DIR / "fastdds_large_frames.xml"
FASTDDS3_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"  # Fast DDS 3: Kilted and later
FASTDDS2_VARIABLE = "FASTRTPS_DEFAULT_PROFILES_FILE"  # Fast DDS 2: Humble, Iron, Jazzy
PROFILE_VARIABLES = (FASTDDS3_VARIABLE, FASTDDS2_VARIABLE)
FASTDDS2_DISTROS = frozenset({"humble", "iron", "jazzy"})
# Fast DDS's own shared-memory segment and port queue (messages) when a profile sets none.
FASTDDS_DEFAULT_SEGMENT_BYTES = 512 * 1024
FASTDDS_DEFAULT_PORT_QUEUE = 512
# Fragments of this many bytes carry a large sensor_msgs/Image when a participant has a UDP
# transport (Fast DDS 2.14 and 3.2; `fragments_at_64k`); shared memory passes each fragment
# through the receiver's port queue as a message of its own.
RTPS_FRAGMENT_BYTES = 65324
# Serialised header, encoding and field overhead of a sensor_msgs/Image, rounded up.
IMAGE_MESSAGE_OVERHEAD = 1024
# Common camera sizes, for saying which fit.
CAMERA_SIZES = ((640, 480), (1280, 720), (1920, 1080), (2560, 2048), (3840, 2160), (4096, 2160), (4000, 3000), (4096, 4096))


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def profile_variables(environ: dict[str, str] | os._Environ = os.environ) -> tuple[str, ...]:
    """The variable names the Fast DDS of this ROS installation reads its profile from.

    ROS_DISTRO (set by every ROS setup file) decides; without it, the ROS wheels installed here
    (ros-fastdds is Fast DDS 3, ros-fastrtps Fast DDS 2); failing both, the two names.
    """
    distro = environ.get("ROS_DISTRO", "").strip().lower()
    if distro:
        return (FASTDDS2_VARIABLE,) if distro in FASTDDS2_DISTROS else (FASTDDS3_VARIABLE,)
    if _installed("ros-fastdds"):
        return (FASTDDS3_VARIABLE,)
    if _installed("ros-fastrtps"):
        return (FASTDDS2_VARIABLE,)
    return PROFILE_VARIABLES


def use_large_data_profile(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Point Fast DDS at the packaged large-data profile unless the user chose one.

    A profile the user set under either name is moved to the name this Fast DDS reads (see
    `profile_variables`). Must run before rclpy.init(). Set INSTRUCTSAM_FASTDDS_PROFILE=0 to
    keep Fast DDS defaults.
    """
    if environ.get("INSTRUCTSAM_FASTDDS_PROFILE", "1") == "0":
        return
    wanted = profile_variables(environ)
    chosen = next((environ[name] for name in (*wanted, *PROFILE_VARIABLES) if environ.get(name)), str(DEFAULT_PROFILE))
    for name in PROFILE_VARIABLES:
        if name in wanted:
            environ[name] = chosen
        else:
            environ.pop(name, None)


def active_profile(environ: dict[str, str] | os._Environ = os.environ) -> Path | None:
    """The profile file this process's Fast DDS reads, if any."""
    for name in profile_variables(environ):
        if environ.get(name):
            return Path(environ[name])
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in element if _local(c.tag) == name), None)


def _transports(profile: Path) -> list[dict[str, str]] | None:
    """The fields of each transport the profile's default participant uses, Fast DDS's built-in
    ones as {"type": "builtin"} unless turned off; None when the file cannot be read or has no
    default participant profile."""
    try:
        root = ET.parse(profile).getroot()
    except (OSError, ET.ParseError):
        return None
    participants = [e for e in root.iter() if _local(e.tag) == "participant" and e.get("is_default_profile") == "true"]
    if not participants:
        return None
    rtps = _child(participants[0], "rtps")
    user = _child(rtps, "userTransports") if rtps is not None else None
    used = {(e.text or "").strip() for e in user} if user is not None else set()
    builtin = _child(rtps, "useBuiltinTransports") if rtps is not None else None
    transports = [] if builtin is not None and (builtin.text or "").strip().lower() == "false" else [{"type": "builtin"}]
    for descriptor in root.iter():
        if _local(descriptor.tag) == "transport_descriptor":
            fields = {_local(c.tag): (c.text or "").strip() for c in descriptor}
            if fields.get("transport_id") in used:
                transports.append(fields)
    return transports


def _shared_memory_fields(profile: Path) -> dict[str, str] | None:
    """The fields of the shared-memory transport the profile's default participant uses; None
    also when it has none of its own (then Fast DDS's defaults apply)."""
    return next((t for t in _transports(profile) or [] if t.get("type", "").upper() == "SHM"), None)


def fragments_at_64k(profile: Path, environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether Fast DDS cuts large messages into 64 KiB fragments: it fragments at the smallest
    maxMessageSize of a participant's transports, so any UDP or TCP one (65,500 bytes at most)
    decides, and rmw_fastrtps adds a UDPv4 and a default shared-memory transport of its own
    under ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST."""
    if environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").strip().upper() == "LOCALHOST":
        return True
    return any(t.get("type", "").upper() != "SHM" for t in _transports(profile) or [])


def shared_memory_limit(profile: Path) -> int | None:
    """Largest message in bytes that the profile's default participant sends over shared memory
    (its segment, or a smaller maxMessageSize); None as `_shared_memory_fields`."""
    fields = _shared_memory_fields(profile)
    if fields is None:
        return None
    try:
        segment = int(fields.get("segment_size") or FASTDDS_DEFAULT_SEGMENT_BYTES)
        return min(segment, int(fields.get("maxMessageSize") or segment))
    except ValueError:
        return None


def port_queue_capacity(profile: Path) -> int | None:
    """How many messages the profile's shared-memory ports hold (Fast DDS's 512 when unset)."""
    fields = _shared_memory_fields(profile)
    try:
        return None if fields is None else int(fields.get("port_queue_capacity") or FASTDDS_DEFAULT_PORT_QUEUE)
    except ValueError:
        return None


def first_frame_warning(environ: dict[str, str] | os._Environ = os.environ, rmw: str = "rmw_fastrtps_cpp") -> str | None:
    """A line for the node's log when its profile carries frames its shared-memory port cannot
    queue whole: the first such frame after a publisher connects is then lost (module docstring)."""
    if "fastrtps" not in rmw and "fastdds" not in rmw:
        return None
    profile = active_profile(environ)
    limit = shared_memory_limit(profile) if profile is not None else None
    capacity = port_queue_capacity(profile) if profile is not None else None
    if limit is None or capacity is None or capacity * RTPS_FRAGMENT_BYTES >= limit:
        return None
    if not fragments_at_64k(profile, environ):  # each frame is one message in the port
        return None
    queued = capacity * RTPS_FRAGMENT_BYTES
    needed = -(-limit // RTPS_FRAGMENT_BYTES)
    return (f"Fast DDS profile {profile.name}: its shared-memory port queues {capacity} messages ({_mib(queued)} "
            f"of 64 KiB fragments) but it carries images up to {_mib(limit)}: the first frame over {_mib(queued)} "
            "after a publisher connects (and any frame larger than all before) is lost while this node's reader "
            f"grows its buffer; set port_queue_capacity to {needed} or more in the profile "
            f"({LARGE_FRAMES_PROFILE.name} does)")


def largest_rgb8(limit_bytes: int) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(largest common camera size whose rgb8 frame fits, smallest that does not)."""
    fits = [s for s in CAMERA_SIZES if s[0] * s[1] * 3 + IMAGE_MESSAGE_OVERHEAD <= limit_bytes]
    too_big = [s for s in CAMERA_SIZES if s not in fits]
    return (fits[-1] if fits else None), (too_big[0] if too_big else None)


def _mib(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n / 2**20:.1f} MiB"


def frame_limit_report(environ: dict[str, str] | os._Environ = os.environ, rmw: str = "rmw_fastrtps_cpp") -> str:
    """One line for the node's log: the Fast DDS profile in use and the largest image it carries."""
    if "fastrtps" not in rmw and "fastdds" not in rmw:
        return f"RMW {rmw}: the largest image this node can receive is set by that middleware's configuration"
    profile = active_profile(environ)
    if profile is None:
        return ("no Fast DDS profile is set: with Fast DDS defaults most images of "
                f"640x480 and larger are lost between processes; use {DEFAULT_PROFILE.name} in every process")
    limit = shared_memory_limit(profile)
    if limit is None:
        return (f"Fast DDS profile {profile}: it sets no shared-memory transport this node can read, so the "
                "largest image it delivers between processes is unknown (Fast DDS defaults lose most of 640x480 and larger)")
    fits, too_big = largest_rgb8(limit)
    sizes = []
    if fits:
        sizes.append(f"{fits[0]}x{fits[1]} rgb8 fits")
    if too_big:
        sizes.append(f"{too_big[0]}x{too_big[1]} rgb8 ({_mib(too_big[0] * too_big[1] * 3)}) does not")
    advice = ""
    if too_big and limit < (shared_memory_limit(LARGE_FRAMES_PROFILE) or 0):
        advice = f"; for larger frames use compressed input or {LARGE_FRAMES_PROFILE.name} in every process"
    return (f"Fast DDS profile {profile.name}: images up to {_mib(limit)} reach this node from other processes "
            f"({', '.join(sizes)}); larger ones do not fit its shared-memory segment at once and are often lost in DDS, unseen by the node{advice}")
