"""instructsam-demo: the whole ROS 2 pipeline on one machine, in one command, no ros2 CLI.

Starts three plain processes that talk over DDS, exactly as on a robot:
  1. segment_node serving two cameras (`front`, `wrist`) with one model (the embedded default
     model; a freshly written tiny random model when the default model is not installed,
     saying so),
  2. a synthetic camera process (camera.py) publishing a slowly panning scene of coloured shapes on each
     camera's `<camera>/image` (sensor QoS), the cameras panning in opposite directions, and an
     aligned depth image of the same scene (each shape a flat cut-out at a known distance, a
     wall behind) on `<camera>/depth/image` with its `<camera>/depth/camera_info`,
  3. this process: it publishes the node's instruction (latched), which the first camera
     follows; each other camera gets its own as the node's `<camera>.instruction` parameter (in
     place before that camera's first frame; `<camera>/instruction` replaces it later); it prints
     (recorder.py) the instances of every result with each instance's 3-D position and writes
     the overlay of every result (the distance next to each label) as a PNG; at the end it says,
     per camera and instruction, how many frames found something. --no-depth runs it without
     the depth images.

  instructsam-demo --seconds 8 --out instructsam_demo
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from instructsam_core.errors import UserError
from instructsam_ros.demo.camera import DEMO_NAMESPACE, camera_main, camera_name, frame_size, positive
from instructsam_ros.demo.recorder import Recorder
from instructsam_ros.demo.scenes import default_instructions, depth_line, synthetic_scene
from instructsam_ros.processes import child_env, start_child, stop_child
from instructsam_ros.spinning import BackgroundSpinner


def pick_model(model: str, scratch: Path) -> tuple[str, str]:
    """(model argument for the node, a line saying which model runs)."""
    from instructsam_core.model_paths import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, resolve_model_dir

    if model != DEFAULT_MODEL_NAME:
        return str(resolve_model_dir(model)), f"model: {model}"
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return DEFAULT_MODEL_NAME, f"model: the embedded default model ({DEFAULT_MODEL_DIR})"
    from instructsam_core.tiny import write_tiny_model

    path = write_tiny_model(scratch / "tiny_model", seed=0)
    return str(path), (
        "model: the embedded default model is not installed yet, so this demo runs a freshly written "
        "tiny RANDOM model: the pipeline is real, the masks are meaningless"
    )


def run_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", "41")  # a domain of its own unless the user picks one
    from instructsam_ros.dds.profiles import use_large_data_profile

    use_large_data_profile()  # for this process and, through the environment, the children
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("overlay_*.png"):
        old.unlink()
    scratch = Path(tempfile.mkdtemp(prefix="instructsam_demo_"))
    try:
        model, model_line = pick_model(args.model, scratch)
        print(f"demo: {model_line}", flush=True)
        width, height = args.size
        _, shapes, colors = synthetic_scene(args.seed, height, width)
        instructions = args.instruction or default_instructions(shapes, colors)
        return _run(args, model, instructions, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def camera_instructions(cameras: list[str], instructions: list[str]) -> list[tuple[str, str]]:
    """(camera, instruction) pairs: camera k gets instruction k (cycling when there are fewer)."""
    return [(camera, instructions[k % len(instructions)]) for k, camera in enumerate(cameras)]


def _run(args: argparse.Namespace, model: str, instructions: list[str], out_dir: Path) -> int:
    import rclpy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from instructsam_ros.segment_node.cameras import camera_topic
    from instructsam_ros.interfaces import InstanceSegmentation
    from instructsam_ros.dds.qos import instruction_qos, stream_qos

    ns = args.namespace
    cameras = args.cameras
    asked = camera_instructions(cameras, instructions)
    env = child_env()
    node_cmd = [
        sys.executable, "-m", "instructsam_ros.segment_node", "--ros-args", "-r", f"__ns:={ns}",
        "-p", f"model:={model}", "-p", f"device:={args.device}", "-p", f"threshold:={args.threshold}",
        "-p", "max_frame_age:=2.0", "-p", f"cameras:=[{', '.join(cameras)}]", "-p", f"depth:={str(args.depth).lower()}",
    ]
    # Every camera but the first starts with its own instruction as a parameter: in place before
    # the camera's first frame (a latched topic message may arrive just after it). JSON quoting
    # keeps any text a YAML string.
    for camera, text in asked[1:]:
        node_cmd += ["-p", f"{camera}.instruction:={json.dumps(text)}"]
    width, height = args.size
    camera_cmd = [
        sys.executable, "-m", "instructsam_ros.demo", "camera", "--namespace", ns, "--rate", str(args.rate),
        "--size", f"{width}x{height}", "--seed", str(args.seed), *(["--depth"] if args.depth else []), "--cameras", *cameras,
    ]
    recorder = Recorder(out_dir)
    rclpy.init()
    node = rclpy.create_node("instructsam_demo", namespace=ns)
    # The first camera follows the node's instruction; every other camera gets its own.
    instruction_pub = node.create_publisher(String, "instruction", instruction_qos())
    for camera in cameras:
        node.create_subscription(InstanceSegmentation, camera_topic(camera, "segmentation"),
                                 lambda msg, camera=camera: recorder.on_result(camera, msg), stream_qos("reliable", 10))
        node.create_subscription(Image, camera_topic(camera, "overlay"),
                                 lambda msg, camera=camera: recorder.on_overlay(camera, msg), stream_qos("reliable", 10))
    spinner = BackgroundSpinner(node)
    print(f"demo: cameras {', '.join(cameras)} on one segment node; {width}x{height} frames at {args.rate:g} Hz; "
          f"overlays -> {out_dir}/", flush=True)
    if args.depth:
        print(depth_line(args.seed), flush=True)
    for k, (camera, text) in enumerate(asked):
        how = ("follows the node's instruction" if k == 0 else
               f"has its own instruction (parameter {camera}.instruction; a new one on {camera}/instruction replaces it)")
        print(f"demo: {camera} {how}: {text!r}", flush=True)
    instruction_pub.publish(String(data=asked[0][1]))
    node_proc = start_child(node_cmd, env=env)
    camera_proc = start_child(camera_cmd, env=env)
    status = 0
    try:
        deadline = time.monotonic() + args.startup_timeout
        while recorder.first_result_at is None:
            if node_proc.poll() is not None or camera_proc.poll() is not None:
                raise UserError("the segment node or the camera exited during start-up (see its output above)")
            if time.monotonic() > deadline:
                raise UserError(f"no result within {args.startup_timeout:g} s of start-up (model loading too slow? try --startup-timeout)")
            time.sleep(0.1)
        while time.monotonic() - recorder.first_result_at < args.seconds:
            if node_proc.poll() is not None:
                raise UserError("the segment node exited (see its output above)")
            time.sleep(0.05)
        time.sleep(0.5)  # let the last overlays arrive
    except KeyboardInterrupt:
        status = 130
    finally:
        stop_child(camera_proc, "demo: camera")
        stop_child(node_proc, "demo: segment node")
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    saved = sorted(out_dir.glob("overlay_*.png"))
    latencies = np.array(recorder.latencies) if recorder.latencies else np.zeros(1)
    print(
        f"demo: {len(recorder.order)} results, end-to-end latency median {np.median(latencies) * 1e3:.0f} ms; "
        f"{len(saved)} overlay PNGs in {out_dir}/",
        flush=True,
    )
    for line in recorder.summary(asked):
        print(line, flush=True)
    if status == 0 and not saved:
        raise UserError("no overlay was written")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructsam-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model directory or 'default' (embedded model)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--seconds", type=positive, default=8.0, help="how long to stream after the first result")
    parser.add_argument("--rate", type=positive, default=5.0, help="camera frames per second")
    parser.add_argument("--size", type=frame_size, default=(640, 480), help="camera frame size WxH")
    parser.add_argument("--seed", type=int, default=3, help="which synthetic scene")
    parser.add_argument("--cameras", nargs="+", type=camera_name, default=["front", "wrist"],
                        help="camera names, all served by one segment node")
    parser.add_argument("--instruction", action="append",
                        help="instruction of a camera, repeated in camera order (the first camera follows the node's "
                             "instruction, the others have their own; fewer instructions than cameras are reused)")
    parser.add_argument("--no-depth", dest="depth", action="store_false",
                        help="no depth images: the node runs without 3-D (as with depth:=false)")
    parser.add_argument("--out", default="instructsam_demo", help="directory for the overlay PNGs")
    parser.add_argument("--namespace", default=DEMO_NAMESPACE)
    parser.add_argument("--startup-timeout", type=positive, default=300.0, help="seconds to wait for the first result")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["camera"]:
        return camera_main(argv[1:])
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        print(f"instructsam-demo: error: --threshold must be in [0, 1], got {args.threshold}", file=sys.stderr)
        return 2
    if len(set(args.cameras)) != len(args.cameras):
        print(f"instructsam-demo: error: --cameras names a camera twice: {' '.join(args.cameras)}", file=sys.stderr)
        return 2
    try:
        return run_demo(args)
    except UserError as error:
        print(f"instructsam-demo: error: {error}", file=sys.stderr)
        return 2
