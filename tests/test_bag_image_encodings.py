"""annotate-bag reads 8UC3/8UC1 frames as cv_bridge reads them (bgr8/mono8), from a real bag.

One recording holds the same picture on five topics: as bgr8 and as 8UC3 (the same BGR bytes),
as mono8 and as 8UC1 (the same grey bytes), and the BGR bytes mislabelled rgb8, which shows that
the model's answer depends on the channel order. Each generic topic must be annotated exactly
as its named twin.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Writer

from bagmaker import BASE_NS, PLUGINS, STORE, TYPES, _header, coco, scenes
from instructsam_core.cli import main

TOPICS = {  # topic -> (encoding written, pixels: "bgr" or "grey")
    "/bgr8": ("bgr8", "bgr"), "/generic3": ("8UC3", "bgr"), "/mislabelled": ("rgb8", "bgr"),
    "/mono8": ("mono8", "grey"), "/generic1": ("8UC1", "grey"),
}


def _write(path, frames: list[np.ndarray]) -> None:
    with Writer(path, version=9, storage_plugin=PLUGINS["mcap"]) as writer:
        connections = {name: writer.add_connection(name, "sensor_msgs/msg/Image", typestore=STORE) for name in TOPICS}
        for i, rgb in enumerate(frames):
            pixels = {"bgr": np.ascontiguousarray(rgb[:, :, ::-1]), "grey": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)}
            for k, (name, (encoding, kind)) in enumerate(TOPICS.items()):
                data = pixels[kind]
                height, width = data.shape[:2]
                msg = TYPES["sensor_msgs/msg/Image"](
                    header=_header(1000 + i, k, "camera"), height=height, width=width, encoding=encoding,
                    is_bigendian=0, step=data.strides[0], data=data.reshape(-1))
                writer.write(connections[name], BASE_NS + i * 10**9 + k * 1000, STORE.serialize_cdr(msg, msg.__msgtype__))


@pytest.mark.parametrize("encoding, twin", [("/generic3", "/bgr8"), ("/generic1", "/mono8")])
def test_generic_8bit_frames_are_annotated_as_their_named_twins(tmp_path, tiny_model_dir, capsys, encoding, twin):
    bag, out = tmp_path / "in", tmp_path / "out"
    _write(bag, scenes(2, 48, 64, seed=3))
    topics = [twin, encoding, "/mislabelled"]
    assert main(["annotate-bag", "--bag", str(bag), "--topics", *topics, "--instruction", "red circles", "--out",
                 str(out), "--model", str(tiny_model_dir), "--threshold", "0", "--no-progress"]) == 0
    assert "annotated 6 of 6 frames" in capsys.readouterr().out  # none refused as an unsupported encoding
    data = coco(out)
    by_topic: dict[str, list] = {name: [] for name in topics}
    image_topic = {image["id"]: (image["topic"], image["frame_index"]) for image in data["images"]}
    for annotation in sorted(data["annotations"], key=lambda a: (image_topic[a["image_id"]], a["id"])):
        topic, index = image_topic[annotation["image_id"]]
        by_topic[topic].append((index, annotation["score"], annotation["segmentation"]["counts"]))
    assert by_topic[twin] and by_topic[encoding] == by_topic[twin]
    if encoding == "/generic3":  # the same bytes read as RGB answer differently: the order was tested
        assert [s for _, s, _ in by_topic["/mislabelled"]] != [s for _, s, _ in by_topic[encoding]]
