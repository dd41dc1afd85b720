"""Bags from a second writer: the official MCAP libraries (`mcap`, `mcap-ros2-support`) instead
of rosbags, with a metadata.yaml beside the file as a rosbag2 recorder writes it.

`mcap-ros2-support` writes channels without metadata (no QoS), the way the issue's bags came;
`rewrite` copies such a file with the `mcap` writer alone, adding the channel QoS string rosbag2
stores (or leaving out indexes). The expected messages come from `mcap`'s own reader, never from rosbags
or the code under test.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from mcap.reader import make_reader
from mcap.writer import CompressionType, IndexType
from mcap.writer import Writer as McapWriter
from mcap_ros2.writer import Writer as Ros2Writer

from bagmaker import BASE_NS, scenes

# Message definitions as ROS 2 stores them (ros2msg, dependencies after a line of 80 "=").
_RULE = "=" * 80
_HEADER = f"""{_RULE}
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
{_RULE}
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""
DEFINITIONS = {
    "sensor_msgs/msg/Image": "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n"
                             "uint8 is_bigendian\nuint32 step\nuint8[] data\n" + _HEADER,
    "tf2_msgs/msg/TFMessage": f"""geometry_msgs/TransformStamped[] transforms
{_RULE}
MSG: geometry_msgs/TransformStamped
std_msgs/Header header
string child_frame_id
geometry_msgs/Transform transform
{_RULE}
MSG: geometry_msgs/Transform
geometry_msgs/Vector3 translation
geometry_msgs/Quaternion rotation
{_RULE}
MSG: geometry_msgs/Vector3
float64 x
float64 y
float64 z
{_RULE}
MSG: geometry_msgs/Quaternion
float64 x
float64 y
float64 z
float64 w
""" + _HEADER,
    "std_msgs/msg/String": "string data\n",
}
CAMERA, TF, DESCRIPTION = "/camera/image_raw", "/tf", "/robot_description"
TYPES = {CAMERA: "sensor_msgs/msg/Image", TF: "tf2_msgs/msg/TFMessage", DESCRIPTION: "std_msgs/msg/String"}


def qos(depth: int, reliability: str = "reliable", durability: str = "volatile") -> dict:
    """One offered QoS profile as Jazzy's rosbag2 writes it (policies by name, infinite times)."""
    never = {"sec": 9223372036, "nsec": 854775807}
    return {"history": "keep_last", "depth": depth, "reliability": reliability, "durability": durability,
            "deadline": dict(never), "lifespan": dict(never), "liveliness": "automatic",
            "liveliness_lease_duration": dict(never), "avoid_ros_namespace_conventions": False}


RECORDED_QOS = {CAMERA: [qos(5)], TF: [qos(100)], DESCRIPTION: [qos(1, durability="transient_local")]}


@dataclass
class Frame:
    index: int
    log_time: int
    stamp: tuple[int, int]
    rgb: np.ndarray


def write_mcap(paths: list[Path], frames: int = 20, tf: int = 30, size: tuple[int, int] = (48, 64),
               seed: int = 0) -> list[Frame]:
    """MCAP files written by mcap-ros2-support: one /robot_description, `frames` camera images
    (10 Hz) and `tf` /tf messages between them, split evenly over `paths` (a split recording)."""
    height, width = size
    pictures = scenes(frames, height, width, seed)
    events = [(BASE_NS - 1, DESCRIPTION, 0)]
    events += [(BASE_NS + i * 100_000_000, CAMERA, i) for i in range(frames)]
    events += [(BASE_NS + k * (frames * 100_000_000 // max(tf, 1)) + 1, TF, k) for k in range(tf)]
    events.sort()
    recorded = []
    share = -(-len(events) // len(paths))
    for number, path in enumerate(paths):
        writer = Ros2Writer(str(path), compression=CompressionType.ZSTD)
        schemas = {topic: writer.register_msgdef(msgtype, DEFINITIONS[msgtype]) for topic, msgtype in TYPES.items()}
        for log_time, topic, i in events[number * share:(number + 1) * share]:
            stamp = (1000 + i, 17)
            frame_id = "camera" if topic == CAMERA else "map"
            header = {"stamp": {"sec": stamp[0], "nanosec": stamp[1]}, "frame_id": frame_id}
            if topic == CAMERA:
                message = {"header": header, "height": height, "width": width, "encoding": "rgb8", "is_bigendian": 0,
                           "step": width * 3, "data": pictures[i].tobytes()}
                recorded.append(Frame(i, log_time, stamp, pictures[i]))
            elif topic == TF:
                transform = {"translation": {"x": 0.01 * i, "y": 0.0, "z": 0.0},
                             "rotation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}}
                message = {"transforms": [{"header": header, "child_frame_id": "base_link", "transform": transform}]}
            else:
                message = {"data": "<robot name='r'/>"}
            writer.write_message(topic, schemas[topic], message, log_time=log_time)
        writer.finish()
    return recorded


def rewrite(source: Path, target: Path, profiles: dict[str, list[dict]],
            index_types: IndexType = IndexType.ALL) -> None:
    """`source` rewritten by the `mcap` writer alone, with each channel's QoS as rosbag2 stores it
    (channel metadata `offered_qos_profiles`: the YAML text of the list) and the given indexes."""
    with open(source, "rb") as handle:
        reader = make_reader(handle)
        summary = reader.get_summary()
        writer = McapWriter(str(target), compression=CompressionType.LZ4, index_types=index_types)
        writer.start(profile="ros2", library="mcapmaker")
        schema_ids = {sid: writer.register_schema(s.name, s.encoding, s.data) for sid, s in summary.schemas.items()}
        channel_ids = {}
        for cid, channel in summary.channels.items():
            metadata = {"offered_qos_profiles": yaml.safe_dump(profiles[channel.topic], sort_keys=False).strip()}
            channel_ids[cid] = writer.register_channel(channel.topic, channel.message_encoding,
                                                       schema_ids[channel.schema_id], metadata)
        for _, channel, message in reader.iter_messages(log_time_order=True):
            writer.add_message(channel_ids[channel.id], message.log_time, message.data, message.publish_time)
        writer.finish()


def messages_of(paths: list[Path]) -> list[tuple[str, int, bytes]]:
    """(topic, log time, CDR bytes) of MCAP files as `mcap`'s reader sees them, in log time order."""
    found = []
    for path in paths:
        with open(path, "rb") as handle:
            found += [(c.topic, m.log_time, bytes(m.data)) for _, c, m in make_reader(handle).iter_messages()]
    return sorted(found, key=lambda item: item[1])


def recorder_metadata(bag: Path, files: list[str], counts: dict[str, int], profiles: dict[str, list[dict]],
                      version: int = 9, hashes: dict[str, str] | None = None) -> None:
    """metadata.yaml as Jazzy's recorder writes it (version 9: QoS as a list), or Humble's
    (version 5: QoS as one string with the policies as integers, no hashes, no custom_data)."""
    numbers = {"keep_last": 1, "reliable": 1, "volatile": 2, "transient_local": 1, "automatic": 1}
    times = [t for _, t, _ in messages_of([bag / f for f in files])]
    entries = []
    for name in files:
        own = [t for _, t, _ in messages_of([bag / name])]
        entries.append({"path": name, "starting_time": {"nanoseconds_since_epoch": min(own)},
                        "duration": {"nanoseconds": max(own) - min(own)}, "message_count": len(own)})
    topics = []
    for topic, count in counts.items():
        meta = {"name": topic, "type": TYPES[topic], "serialization_format": "cdr"}
        listed = profiles.get(topic, [])
        if version >= 9:
            meta["offered_qos_profiles"] = listed
            meta["type_description_hash"] = (hashes or {}).get(topic, "")
        else:
            ints = [{k: numbers.get(v, v) if isinstance(v, str) else v for k, v in p.items()} for p in listed]
            meta["offered_qos_profiles"] = yaml.safe_dump(ints, sort_keys=False).strip() if ints else ""
        topics.append({"topic_metadata": meta, "message_count": count})
    info = {"version": version, "storage_identifier": "mcap", "duration": {"nanoseconds": max(times) - min(times)},
            "starting_time": {"nanoseconds_since_epoch": min(times)}, "message_count": sum(counts.values()),
            "topics_with_message_count": topics, "compression_format": "", "compression_mode": "",
            "relative_file_paths": files, "files": entries}
    if version >= 9:
        info.update(custom_data=None, ros_distro="jazzy")
    (bag / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False))
