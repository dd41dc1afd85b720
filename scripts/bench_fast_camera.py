"""How many frames of one fast camera a segment_node answers (the executor's cost at camera rates).

Starts segment_node (tiny random model, one camera, threshold 0, every frame younger than 5 s
accepted), publishes 96x160 rgb8 frames at each rate for SECONDS and counts the frames answered,
the model's median time and the node process's CPU share.

  OMP_NUM_THREADS=1 python scripts/bench_fast_camera.py --rates 5,60 --seconds 4
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="5,60")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", "43")
    from instructsam_ros.dds.profiles import use_large_data_profile

    use_large_data_profile()
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from instructsam_core.tiny import write_tiny_model
    from instructsam_ros.messages.images import array_to_image_msg
    from instructsam_ros.interfaces import InstanceSegmentation
    from instructsam_ros.processes import start_child, stop_child
    from instructsam_ros.dds.qos import instruction_qos, stream_qos

    scratch = Path(tempfile.mkdtemp(prefix="bench_fast_camera_"))
    model = write_tiny_model(scratch / "tiny", seed=0)
    ns = "/bench_fast_camera"
    log = open(scratch / "node.log", "w")
    node_proc = start_child([sys.executable, "-m", "instructsam_ros.segment_node", "--ros-args", "-r", f"__ns:={ns}",
                             "-p", f"model:={model}", "-p", "device:=cpu", "-p", "threshold:=0.0", "-p", "warmup:=false",
                             "-p", "max_frame_age:=5.0", "-p", "instruction:=red circle"],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)
    rclpy.init()
    node = rclpy.create_node("bench_fast_camera", namespace=ns)
    publisher = node.create_publisher(Image, "image", stream_qos("best_effort", 1))
    node.create_publisher(String, "instruction", instruction_qos()).publish(String(data="red circle"))
    results: dict[int, float] = {}
    sub = node.create_subscription(InstanceSegmentation, "segmentation",
                                   lambda m: results.__setitem__(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, m.model_latency),
                                   stream_qos("reliable", 50))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinning = True

    def spin() -> None:
        while spinning:
            executor.spin_once(timeout_sec=0.05)

    threading.Thread(target=spin, daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while publisher.get_subscription_count() == 0 or sub.get_publisher_count() == 0:
            assert time.monotonic() < deadline and node_proc.poll() is None, f"node not ready; see {log.name}"
            time.sleep(0.1)
        time.sleep(2.0)  # activation
        frames = [array_to_image_msg(np.random.default_rng(s).integers(0, 256, (96, 160, 3), dtype=np.uint8), "rgb8") for s in range(4)]
        for rate in [float(r) for r in args.rates.split(",")]:
            sent = []
            ticks = lambda: sum(int(v) for v in Path(f"/proc/{node_proc.pid}/stat").read_text().split()[13:15])  # noqa: E731
            cpu0, start = ticks(), time.monotonic()
            k = 0
            while time.monotonic() - start < args.seconds:
                msg = frames[k % 4]
                ns_now = time.time_ns()
                msg.header.stamp = Time(sec=ns_now // 10**9, nanosec=ns_now % 10**9)
                publisher.publish(msg)
                sent.append(ns_now)
                k += 1
                time.sleep(max(0.0, start + k / rate - time.monotonic()))
            time.sleep(1.0)
            cpu = (ticks() - cpu0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - start)
            model_s = [results[s] for s in sent if s in results]
            print(f"{rate:g} Hz: answered {len(model_s)} of {len(sent)}; model median "
                  f"{np.median(model_s) * 1e3 if model_s else float('nan'):.1f} ms; node CPU {cpu * 100:.0f} %", flush=True)
    finally:
        spinning = False
        stop_child(node_proc, "segment node")
        log.close()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
