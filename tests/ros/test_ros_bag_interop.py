"""A bag written by `instructsam annotate-bag` (no ROS) read with ROS 2's own tools: rclpy
deserialises every new message into the colcon-generated classes, and the type hashes in the
bag are the ones the ROS build computed, for our messages and the standard ones, in every
distribution's format that lists them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from pycocotools import mask as coco_mask
from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import Image

from bagmaker import coco, deserialize, write_bag
from instructsam_core.cli import main
from instructsam_ros import generated_install_dir
from instructsam_ros.messages.images import image_msg_to_array
from instructsam_ros.messages.instances import msg_to_mask
from instructsam_ros.interfaces import InstanceSegmentation

TOPIC = "/cam/image_raw"


def _raw(path: Path, topic: str) -> list[tuple[int, bytes, str]]:
    with AnyReader([path]) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        return [(t, bytes(raw), c.digest) for c, t, raw in reader.messages(connections=connections)]


def test_rclpy_reads_every_new_message_and_the_hashes_match_the_ros_build(tmp_path, tiny_model_dir):
    bag = tmp_path / "in"
    recorded = write_bag(bag, "mcap", {TOPIC: "raw"}, frames=3, size=(40, 56))
    out = tmp_path / "out"
    assert main(["annotate-bag", "--bag", str(bag), "--topics", TOPIC, "--instruction", "red circles",
                 "--out", str(out), "--model", str(tiny_model_dir), "--no-progress"]) == 0

    share = generated_install_dir() / "share" / "instructsam_ros" / "msg"
    built = json.loads((share / "InstanceSegmentation.json").read_text())["type_hashes"][0]
    assert built["type_name"] == "instructsam_ros/msg/InstanceSegmentation"

    annotations = coco(out)["annotations"]
    segmentations = _raw(out, f"{TOPIC}/segmentation")
    labels = _raw(out, f"{TOPIC}/label_image")
    views = deserialize(out, f"{TOPIC}/segmentation")  # the same messages as rosbags reads them
    assert len(segmentations) == len(labels) == len(recorded) == 3
    seen = 0
    for (log_time, raw, digest), (_, label_raw, _), (_, view), frame in zip(segmentations, labels, views, recorded):
        assert digest == built["hash_string"]
        msg = deserialize_message(raw, InstanceSegmentation)
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (*frame.stamp, frame.frame_id)
        assert (msg.height, msg.width, msg.instruction) == (40, 56, "red circles")
        assert list(msg.phrases) == list(view.phrases) and len(msg.instances) == len(view.instances) > 0
        for instance, other in zip(msg.instances, view.instances):
            assert (instance.id, instance.phrase, instance.score, instance.area) == (
                other.id, other.phrase, other.score, other.area)
            # msg_to_mask (the node's inverse) on the rclpy message gives the COCO JSON's mask.
            ann = annotations[seen]
            seen += 1
            rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
            assert np.array_equal(msg_to_mask(instance, 40, 56), coco_mask.decode(rle).astype(bool))
            assert ann["instance_id"] == instance.id
        label = deserialize_message(label_raw, Image)
        assert label.header.stamp == msg.header.stamp and label.encoding == "mono16"
        ids = image_msg_to_array(label)
        assert set(np.unique(ids)) <= {0} | {i.id for i in msg.instances}
    assert seen == len(annotations)


def _built_hash(msgtype: str) -> str:
    """The RIHS01 the ROS build of this environment lists for a type (share/<pkg>/msg/<T>.json)."""
    package, _, name = msgtype.split("/")
    if package == "instructsam_ros":
        share = generated_install_dir() / "share"
    else:
        share = Path(sys.prefix) / "share"
    return json.loads((share / package / "msg" / f"{name}.json").read_text())["type_hashes"][0]["hash_string"]


@pytest.mark.parametrize("distro", ["iron", "jazzy", "kilted"])
def test_every_listed_type_hash_is_the_ros_builds(tmp_path, tiny_model_dir, distro):
    """metadata.yaml and the MCAP channels carry, for every topic, the hash ROS itself computes."""
    bag = tmp_path / "in"
    write_bag(bag, "mcap", {TOPIC: "raw"}, frames=2, size=(40, 56))
    out = tmp_path / "out"
    assert main(["annotate-bag", "--bag", str(bag), "--topics", TOPIC, "--instruction", "red circles", "--out", str(out),
                 "--model", str(tiny_model_dir), "--no-progress", "--ros-distro", distro, "--overlay"]) == 0
    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    listed = {t["topic_metadata"]["name"]: t["topic_metadata"] for t in info["topics_with_message_count"]}
    assert len(listed) == 5  # image, chatter, segmentation, label image, overlay
    for meta in listed.values():
        assert meta["type_description_hash"] == _built_hash(meta["type"]), meta["name"]
    with open(out / "out.mcap", "rb") as handle:
        channels = make_reader(handle).get_summary().channels.values()
        assert {c.topic: c.metadata["topic_type_hash"] for c in channels} == {
            name: _built_hash(meta["type"]) for name, meta in listed.items()}
