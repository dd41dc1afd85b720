"""Child process for the large-frame test: publish rgb8 frames under this process's DDS profile.

  python publish_frames.py TOPIC WxH[,WxH...] SECONDS_PER_SIZE RATE_HZ [SETTLE_S]

Waits for a subscriber (and SETTLE_S more, default 0), then publishes zero frames of each size
at RATE_HZ with fresh stamps (best effort, depth 1, like a camera) and prints one JSON line per
frame: {"size", "stamp_ns"}.
The Fast DDS profile comes from the environment (dds.profiles.profile_variables names it).
"""
from __future__ import annotations

import array
import json
import sys
import time

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image


def main() -> int:
    topic, sizes, seconds, rate = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]), float(sys.argv[4])
    rclpy.init()
    node = rclpy.create_node("large_frame_publisher")
    publisher = node.create_publisher(Image, topic, QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    deadline = time.monotonic() + 60
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(float(sys.argv[5]) if len(sys.argv) > 5 else 0.0)
    for size in sizes:
        width, height = (int(v) for v in size.split("x"))
        msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
        msg.header.frame_id = size
        msg.data = array.array("B", bytes(width * height * 3))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            now = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = now // 10**9, now % 10**9
            publisher.publish(msg)
            print(json.dumps({"size": size, "stamp_ns": now}), flush=True)
            time.sleep(1.0 / rate)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
