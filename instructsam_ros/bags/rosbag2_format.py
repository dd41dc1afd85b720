"""What each ROS 2 distribution's rosbag2 writes, so an output bag opens where it will be played.

Facts from ros2/rosbag2 (branches humble, iron, jazzy; rolling of late 2024 for Kilted, which
rosbags 0.11 also reads as version 9):
  * metadata.yaml (rosbag2_storage yaml.hpp / metadata_io.cpp): Humble writes version 5, Iron 7,
    Jazzy and Kilted 9, keys in the order of `metadata_document`. Version 7 added
    `type_description_hash` per topic, 6 `custom_data`, 8 `ros_distro`.
  * offered_qos_profiles: up to version 8 ONE YAML string (a dumped list of profiles with the
    policies as integers); Humble's and Iron's readers take it `as<std::string>()` and fail on
    anything else. Version 9 writes a YAML list with the policies as names ("keep_last").
  * sqlite3 (rosbag2_storage_default_plugins / _sqlite3): Humble schema_version 3 (tables
    schema, metadata, topics without type_description_hash, messages); Iron, Jazzy, Kilted 4
    (type_description_hash column, message_definitions table, the metadata YAML in `metadata`).
  * MCAP (rosbag2_storage_mcap): profile "ros2", schema encoding ros2msg/ros2idl, channel
    metadata `offered_qos_profiles` (the string form of the distro) and from Iron on
    `topic_type_hash`; a "rosbag2" metadata record with ROS_DISTRO (Humble, Iron) or the
    serialized metadata (Jazzy on).
  * compression (rosbag2_compression): compression_format "zstd", compression_mode "FILE" (each
    file zstd-compressed whole, listed as <name>.zstd) or "MESSAGE", both "" when uncompressed.
"""
from __future__ import annotations

from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class Distro:
    name: str
    version: int  # metadata.yaml version its rosbag2 writes
    sqlite_schema: int  # the sqlite3 plugin's schema_version

    @property
    def qos_as_list(self) -> bool:
        return self.version >= 9

    @property
    def type_hashes(self) -> bool:
        return self.version >= 7


DISTROS = {"humble": Distro("humble", 5, 3), "iron": Distro("iron", 7, 4),
           "jazzy": Distro("jazzy", 9, 4), "kilted": Distro("kilted", 9, 4)}


def distro_for(version: int | None, ros_distro: str | None) -> Distro:
    """The distribution whose format an output of an input bag takes.

    The input's own distribution when it names one; else the oldest that writes its metadata
    version's QoS form (<= 5 Humble, 6-8 Iron: a string; 9 Jazzy: a list); with nothing known
    (a bare MCAP file from another writer), Humble's, which every supported distribution reads.
    """
    name = (ros_distro or "").strip().lower()
    if name in DISTROS:
        return DISTROS[name]
    if version is None or version <= 5:
        return DISTROS["humble"]
    return DISTROS["iron"] if version <= 8 else DISTROS["jazzy"]


def qos_entries(profiles, as_names: bool) -> list[dict]:
    """rosbags Qos profiles as rosbag2 serialises them (policies as ints, or names from 9 on)."""
    def policy(value):
        return value.name.lower() if as_names else value.value

    return [{"history": policy(p.history), "depth": p.depth, "reliability": policy(p.reliability),
             "durability": policy(p.durability), "deadline": {"sec": p.deadline.sec, "nsec": p.deadline.nsec},
             "lifespan": {"sec": p.lifespan.sec, "nsec": p.lifespan.nsec}, "liveliness": policy(p.liveliness),
             "liveliness_lease_duration": {"sec": p.liveliness_lease_duration.sec,
                                           "nsec": p.liveliness_lease_duration.nsec},
             "avoid_ros_namespace_conventions": bool(p.avoid_ros_namespace_conventions)} for p in profiles]


def qos_text(profiles, distro: Distro) -> str:
    """The QoS string of a storage file (MCAP channel metadata, sqlite3 topics table) and, up to
    version 8, of metadata.yaml: yaml-cpp's dump of the list (empty: "" before 9, "[]" from 9)."""
    entries = qos_entries(profiles, distro.qos_as_list)
    if not entries:
        return "[]" if distro.qos_as_list else ""
    return yaml.safe_dump(entries, sort_keys=False, default_flow_style=False).rstrip("\n")


@dataclass
class TopicRecord:
    """One topic of the output as metadata.yaml lists it."""

    name: str
    msgtype: str
    serialization_format: str
    qos: list
    digest: str
    count: int = 0


@dataclass
class FileRecord:
    path: str  # relative to the bag directory, as listed (with .zstd when file-compressed)
    start: int
    duration: int
    count: int


def metadata_document(distro: Distro, storage: str, files: list[FileRecord], topics: list[TopicRecord],
                      compression: tuple[str, str], custom_data: dict | None = None) -> dict:
    """rosbag2_bagfile_information as the distribution's rosbag2 writes it, in its key order."""
    start = min((f.start for f in files if f.count), default=0)
    end = max((f.start + f.duration for f in files if f.count), default=start)
    entries = []
    for topic in topics:
        meta = {"name": topic.name, "type": topic.msgtype, "serialization_format": topic.serialization_format,
                "offered_qos_profiles": (qos_entries(topic.qos, True) if distro.qos_as_list
                                         else qos_text(topic.qos, distro))}
        if distro.type_hashes:
            meta["type_description_hash"] = topic.digest
        entries.append({"topic_metadata": meta, "message_count": topic.count})
    document = {
        "version": distro.version,
        "storage_identifier": storage,
        "duration": {"nanoseconds": end - start},
        "starting_time": {"nanoseconds_since_epoch": start},
        "message_count": sum(t.count for t in topics),
        "topics_with_message_count": entries,
        "compression_format": compression[0],
        "compression_mode": compression[1],
        "relative_file_paths": [f.path for f in files],
        "files": [{"path": f.path, "starting_time": {"nanoseconds_since_epoch": f.start},
                   "duration": {"nanoseconds": f.duration}, "message_count": f.count} for f in files],
    }
    if distro.version >= 6:
        document["custom_data"] = dict(custom_data) if custom_data else None
    if distro.version >= 8:
        document["ros_distro"] = distro.name
    return document


class _Rosbag2Dumper(yaml.SafeDumper):
    """yaml-cpp's layout: sequences indented under their key, `~` for null, `""` strings."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)


def _string(dumper, value: str):
    style = '"' if (not value or "\n" in value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Rosbag2Dumper.add_representer(str, _string)
_Rosbag2Dumper.add_representer(type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", "~"))


def dump_yaml(document) -> str:
    return yaml.dump(document, Dumper=_Rosbag2Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=1 << 16)


def metadata_yaml(document: dict) -> str:
    """metadata.yaml's text."""
    return dump_yaml({"rosbag2_bagfile_information": document})
