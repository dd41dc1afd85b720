"""Child process for the large-frame test: receive rgb8 frames under this process's DDS profile.

  python receive_frames.py TOPIC SECONDS QUIET_S

Subscribes best effort, depth 1 (as segment_node does) and prints one JSON list of the stamps
(ns) of the frames received, once QUIET_S passed without a frame after the first one, or
SECONDS in all. Only frames whose size matches their frame_id ("WxH", as publish_frames.py
names them) count: a frame that arrived is a whole one.
"""
from __future__ import annotations

import json
import sys
import time

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image


def main() -> int:
    topic, seconds, quiet = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    rclpy.init()
    node = rclpy.create_node("large_frame_receiver")
    got: list[int] = []
    last = [float("inf")]  # monotonic time of the latest frame

    def on_frame(msg: Image) -> None:
        width, height = (int(v) for v in msg.header.frame_id.split("x"))
        if (msg.width, msg.height, len(msg.data)) == (width, height, width * height * 3):
            got.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
        last[0] = time.monotonic()

    node.create_subscription(Image, topic, on_frame, QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    end = time.monotonic() + seconds
    while time.monotonic() < min(end, last[0] + quiet):
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps(got), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
