"""The Fast DDS profiles shipped with the package, and the largest image each one carries.

Between processes on one machine, Fast DDS moves messages through a shared-memory segment.
A message larger than the transport's largest message is cut into fragments, and best-effort
frames cut that way mostly never arrive: nothing is logged anywhere, the node simply sees no
frames. The node therefore says at start-up which profile it runs with and how large an image
that profile carries (`frame_limit_report`).

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
# Fast DDS's own shared-memory segment when a profile sets none.
FASTDDS_DEFAULT_SEGMENT_BYTES = 512 * 1024
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


def shared_memory_limit(profile: Path) -> int | None:
    """Largest message in bytes that the profile's default participant sends over shared memory.

    None when the file cannot be read, when it has no default participant profile, or when
    that participant has no shared-memory transport of its own (then Fast DDS's defaults apply).
    """
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
    for descriptor in root.iter():
        if _local(descriptor.tag) != "transport_descriptor":
            continue
        fields = {_local(c.tag): (c.text or "").strip() for c in descriptor}
        if fields.get("transport_id") not in used or fields.get("type", "").upper() != "SHM":
            continue
        try:
            segment = int(fields.get("segment_size") or FASTDDS_DEFAULT_SEGMENT_BYTES)
            largest = int(fields.get("maxMessageSize") or segment)
        except ValueError:
            return None
        return min(segment, largest)
    return None


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
            f"({', '.join(sizes)}); larger ones are split into fragments and often lost in DDS, unseen by the node{advice}")
