"""A bag written by `instructsam annotate-bag` (rosbags, no ROS) read with ROS 2's own tools:
rclpy deserialises every new message into the colcon-generated classes, and the type hashes
in the bag are the ones the ROS build computed for our messages."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
