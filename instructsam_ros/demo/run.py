"""instructsam-demo: the whole ROS 2 pipeline on one machine, in one command, no ros2 CLI.

Starts three plain processes that talk over DDS, exactly as on a robot:
  1. segment_node serving two cameras (`front`, `wrist`) with one model (the embedded default
     model; a freshly written tiny random model when the default model is not installed,
     saying so),
  2. a synthetic camera process publishing a slowly panning scene of coloured shapes on each
     camera's `<camera>/image` (sensor QoS), the cameras panning in opposite directions, and an
     aligned depth image of the same scene (each shape a flat cut-out at a known distance, a
     wall behind) on `<camera>/depth/image` with its `<camera>/depth/camera_info`,
  3. this process: it publishes the node's instruction (latched), which the first camera
     follows; each other camera gets its own as the node's `<camera>.instruction` parameter (in
     place before that camera's first frame; `<camera>/instruction` replaces it later); it prints the instances of
     every result with each instance's 3-D position and writes the overlay of every result (the
     distance next to each label) as a PNG; at the end it says, per camera and instruction, how
     many frames found something. --no-depth runs it without the depth images.

  instructsam-demo --seconds 8 --out instructsam_demo
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from instructsam_core.errors import UserError
from instructsam_ros.processes import child_env, start_child, stop_child

DEMO_NAMESPACE = "/instructsam_demo"
DEMO_FOV_DEG = 60.0  # horizontal field of view of the synthetic cameras


# ----------------------------------------------------------------------------- camera process
def demo_scene(seed: int):
    """The synth scene (`synth.Scene`, its native size) the demo's camera shows for `seed`: the
    first of the seed's scenes with at least three objects."""
    from instructsam_core import synth

    rng = np.random.default_rng(seed)
    for _ in range(100):
        scene = synth.make_scene(rng)
        if len(scene.objects) >= 3:
            break
    return scene


def synthetic_scene(seed: int, height: int, width: int) -> tuple[np.ndarray, list[str], list[str]]:
    """The demo scene scaled to the frame size (nearest neighbour), with the names that fit it.

    Returns (frame, shape names present, colour names present).
    """
    import cv2

    scene = demo_scene(seed)
    frame = cv2.resize(scene.image, (width, height), interpolation=cv2.INTER_NEAREST)
    shapes = sorted({o.shape for o in scene.objects})
    colors = sorted({o.color for o in scene.objects})
    return frame, shapes, colors


def default_instructions(shapes: list[str], colors: list[str]) -> list[str]:
    """A category phrase (single-forward path) for the first camera and a reasoning question
    (generation path) for the second, the question in the Inst2Seg wording the embedded default
    model was trained on: without the suffix it named the wrong shape for some questions
    ("warning sign" -> rings)."""
    from instructsam_core import synth

    return [synth.PLURAL[shapes[0]], synth.SHAPE_REASONS[shapes[-1]][0] + synth.INST2SEG_PROMPT_SUFFIX]


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


# ----------------------------------------------------------------------------- main process
def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise argparse.ArgumentTypeError(f"size {text} is outside 16x16 .. 4096x4096")
    return width, height


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


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


def position(location) -> str:
    """' at (x, y, z) m' for a located instance (its centre, in the depth camera's optical frame)."""
    if location.status == location.OK:
        c = location.center
        return f" at ({c.x:+.2f}, {c.y:+.2f}, {c.z:.2f}) m"
    if location.status == location.TOO_FEW_VALID:
        return f" 3-D: only {location.valid_pixels} valid depth pixels"
    return ""


def depth_line(seed: int) -> str:
    """What the depth camera shows: each shape's known distance."""
    from instructsam_ros.demo.depth_scenes import scene_depth

    scene = demo_scene(seed)
    _, distances = scene_depth(scene.objects, scene.width, scene.height)
    shapes = ", ".join(f"{o.color} {o.shape} at {d:.2f} m" for o, d in zip(scene.objects, distances))
    return f"demo: depth camera ({DEMO_FOV_DEG:g} degrees wide): {shapes}, a wall at 2.00 m"


class Recorder:
    """Collects results and overlays per camera (matched by stamp), prints and saves them."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.lock = threading.Lock()
        self.results: dict[tuple[str, int], object] = {}
        self.overlays: dict[tuple[str, int], object] = {}
        self.index: dict[tuple[str, int], int] = {}
        self.order: list[tuple[str, int]] = []
        self.first_result_at: float | None = None
        self.latencies: list[float] = []
        # (camera, instruction) -> [results, results with at least one instance], in the order first seen.
        self.found: dict[tuple[str, str], list[int]] = {}

    def on_result(self, camera: str, msg) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        key = (camera, stamp)
        now_ns = time.time_ns()
        with self.lock:
            self.results[key] = msg
            self.order.append(key)
            self.index[key] = len(self.order)
            self.latencies.append((now_ns - stamp) / 1e9)
            if self.first_result_at is None:
                self.first_result_at = time.monotonic()
            index = len(self.order)
            counts = self.found.setdefault((camera, msg.instruction), [0, 0])
            counts[0] += 1
            counts[1] += bool(msg.instances)
        parts = [f"#{i.id} {i.phrase} {i.score:.2f} box=({i.box.x_offset},{i.box.y_offset},{i.box.width},{i.box.height})"
                 f"{position(i.location)}" for i in msg.instances[:6]]
        more = f" (+{len(msg.instances) - 6} more)" if len(msg.instances) > 6 else ""
        depth = f" [3-D missing: {msg.depth_problem}]" if msg.depth_status not in (msg.DEPTH_DISABLED, msg.DEPTH_OK) else ""
        print(f"frame {index:04d} {camera} [{msg.instruction!r} -> phrases {list(msg.phrases)}] "
              f"{len(msg.instances)} instances: {'; '.join(parts) or '-'}{more}{depth}", flush=True)
        self._save(key)

    def summary(self, asked: list[tuple[str, str]]) -> list[str]:
        """One line per (camera, instruction) (those asked, then any other a result answered):
        how many of its results found at least one instance."""
        with self.lock:
            found = {key: tuple(counts) for key, counts in self.found.items()}
        lines = []
        for camera, text in dict.fromkeys([*asked, *found]):
            results, hits = found.get((camera, text), (0, 0))
            lines.append(f"demo: {camera} {text!r}: {hits} of {results} frames found something")
        return lines

    def on_overlay(self, camera: str, msg) -> None:
        key = (camera, msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
        with self.lock:
            self.overlays[key] = msg
        self._save(key)

    def _save(self, key: tuple[str, int]) -> None:
        import cv2

        from instructsam_ros.messages.images import image_msg_to_array

        with self.lock:
            if key not in self.results or key not in self.overlays:
                return
            index = self.index[key]
            overlay = self.overlays.pop(key)
        rgb = image_msg_to_array(overlay)
        cv2.imwrite(str(self.out_dir / f"overlay_{key[0]}_{index:04d}.png"), np.ascontiguousarray(rgb[:, :, ::-1]))


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
    from rclpy.executors import SingleThreadedExecutor
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
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinning = True

    def spin() -> None:
        while spinning and rclpy.ok():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
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
        spinning = False
        spinner.join(timeout=5)
        executor.shutdown(timeout_sec=1)
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


def _camera_names(text: str) -> str:
    from instructsam_ros.segment_node.cameras import camera_name_problem

    problem = camera_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructsam-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model directory or 'default' (embedded model)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--seconds", type=_positive, default=8.0, help="how long to stream after the first result")
    parser.add_argument("--rate", type=_positive, default=5.0, help="camera frames per second")
    parser.add_argument("--size", type=_size, default=(640, 480), help="camera frame size WxH")
    parser.add_argument("--seed", type=int, default=3, help="which synthetic scene")
    parser.add_argument("--cameras", nargs="+", type=_camera_names, default=["front", "wrist"],
                        help="camera names, all served by one segment node")
    parser.add_argument("--instruction", action="append",
                        help="instruction of a camera, repeated in camera order (the first camera follows the node's "
                             "instruction, the others have their own; fewer instructions than cameras are reused)")
    parser.add_argument("--no-depth", dest="depth", action="store_false",
                        help="no depth images: the node runs without 3-D (as with depth:=false)")
    parser.add_argument("--out", default="instructsam_demo", help="directory for the overlay PNGs")
    parser.add_argument("--namespace", default=DEMO_NAMESPACE)
    parser.add_argument("--startup-timeout", type=_positive, default=300.0, help="seconds to wait for the first result")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["camera"]:
        camera = argparse.ArgumentParser(prog="instructsam-demo camera")
        camera.add_argument("--namespace", default=DEMO_NAMESPACE)
        camera.add_argument("--rate", type=_positive, default=5.0)
        camera.add_argument("--size", type=_size, default=(640, 480))
        camera.add_argument("--seed", type=int, default=3)
        camera.add_argument("--pan-px-per-s", type=float, default=12.0)
        camera.add_argument("--cameras", nargs="*", type=_camera_names, default=[])
        camera.add_argument("--depth", action="store_true", help="also publish each camera's aligned depth and CameraInfo")
        return run_camera(camera.parse_args(argv[1:]))
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

