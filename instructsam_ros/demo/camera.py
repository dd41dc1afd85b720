"""The demo's camera process (`instructsam-demo camera`): every camera's panning scene on
`<camera>/image` (sensor QoS), and with --depth its aligned depth image and CameraInfo; and the
argument types the demo's two command lines share."""
from __future__ import annotations

import argparse
import time

import numpy as np

from instructsam_ros.demo.scenes import DEMO_FOV_DEG, demo_scene, synthetic_scene

DEMO_NAMESPACE = "/instructsam_demo"


def frame_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise argparse.ArgumentTypeError(f"size {text} is outside 16x16 .. 4096x4096")
    return width, height


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def camera_name(text: str) -> str:
    from instructsam_ros.segment_node.cameras import camera_name_problem

    problem = camera_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def run_camera(args: argparse.Namespace) -> int:
    """Publish the panning scene on every camera's `<camera>/image` at `rate` Hz until interrupted
    (camera k pans in direction (-1)^k, so the cameras show different frames)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from sensor_msgs.msg import Image

    from instructsam_ros.segment_node.cameras import camera_topic
    from instructsam_ros.messages.images import array_to_image_msg
    from instructsam_ros.dds.qos import stream_qos
    from instructsam_ros.dds.profiles import use_large_data_profile

    use_large_data_profile()
    width, height = args.size
    frame, _, _ = synthetic_scene(args.seed, height, width)
    cameras = args.cameras or [""]
    rclpy.init()
    node = rclpy.create_node("synthetic_cameras", namespace=args.namespace)
    publishers = [node.create_publisher(Image, camera_topic(name, "image"), stream_qos("best_effort", 1)) for name in cameras]
    depth_publishers = []
    if args.depth:
        from sensor_msgs.msg import CameraInfo

        from instructsam_ros.demo.depth_scenes import pinhole, scene_depth, to_16uc1

        millimetres = to_16uc1(scene_depth(demo_scene(args.seed).objects, width, height)[0])
        k = pinhole(width, height, DEMO_FOV_DEG)
        info = CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5)
        info.k = [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]
        info.p = [k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        depth_publishers = [(node.create_publisher(Image, camera_topic(name, "depth/image"), stream_qos("best_effort", 1)),
                             node.create_publisher(CameraInfo, camera_topic(name, "depth/camera_info"), stream_qos("best_effort", 1)))
                            for name in cameras]
    sent = 0
    start = time.monotonic()
    try:
        while rclpy.ok():
            shift = int(round((time.monotonic() - start) * args.pan_px_per_s))
            stamp = node.get_clock().now().to_msg()
            for k, (name, publisher) in enumerate(zip(cameras, publishers)):
                roll = (-1) ** k * shift % width
                msg = array_to_image_msg(np.roll(frame, roll, axis=1), "rgb8")
                msg.header.stamp = stamp
                msg.header.frame_id = f"demo_{name or 'camera'}_optical"
                if depth_publishers:  # aligned depth: the same pixels, stamp and optical frame
                    depth_pub, info_pub = depth_publishers[k]
                    info.header = msg.header
                    info_pub.publish(info)
                    depth_msg = array_to_image_msg(np.roll(millimetres, roll, axis=1), "mono16", msg.header)
                    depth_msg.encoding = "16UC1"
                    depth_pub.publish(depth_msg)
                publisher.publish(msg)
            sent += 1
            next_time = start + sent / args.rate
            time.sleep(max(0.0, next_time - time.monotonic()))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        print(f"camera: published {sent} frames of {width}x{height} at {args.rate:g} Hz on each of "
              f"{len(cameras)} cameras", flush=True)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def camera_main(argv: list[str]) -> int:
    """`instructsam-demo camera ...`: the camera process the demo starts."""
    camera = argparse.ArgumentParser(prog="instructsam-demo camera")
    camera.add_argument("--namespace", default=DEMO_NAMESPACE)
    camera.add_argument("--rate", type=positive, default=5.0)
    camera.add_argument("--size", type=frame_size, default=(640, 480))
    camera.add_argument("--seed", type=int, default=3)
    camera.add_argument("--pan-px-per-s", type=float, default=12.0)
    camera.add_argument("--cameras", nargs="*", type=camera_name, default=[])
    camera.add_argument("--depth", action="store_true", help="also publish each camera's aligned depth and CameraInfo")
    return run_camera(camera.parse_args(argv))
