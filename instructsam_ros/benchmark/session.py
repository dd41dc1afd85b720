"""Measure segment_node over real DDS, the way ros2_benchmark reports perception nodes.

The node runs in its own process (as deployed); this process publishes camera frames at a
fixed rate and receives the results. For each input size it reports:
  * end-to-end latency (image stamp -> result received here), median and p99, at each rate;
  * drops (frames without a result) at each rate;
  * model time (the predictor call, from the result message) and the node's overhead:
    end-to-end minus model time (transport both ways, decoding, conversion, publishing, and
    waiting for the model when a frame arrives while it is busy), plus the in-node part alone;
  * the peak rate with under 5 % dropped frames (binary search over the rate).

  python -m instructsam_ros.benchmark --model tiny --device cpu --sizes 640x480,1280x720

With --cameras 1,2,4 it compares, for each camera count N in the same run, one node serving N
cameras (one model, frames of all cameras batched into one model call) with N separate nodes
of one camera each (N models): aggregate results per second, each camera's results per second
and end-to-end latency (median, p99), drops, and the memory of the node processes (RSS, and
PSS, which counts a shared library page once). Every camera publishes at --rate.

  python -m instructsam_ros.benchmark --model default --cameras 1,2,4 --rate 30 --sizes 640x480

With --depth it measures the 3-D step (benchmark_depth): one node with depth:=true, ten squares
of known depth, colour-only / depth / depth with a point-cloud subscriber alternating in the
same run (--repeats rounds of --seconds each, at --depth-rate), the node's own 3-D step time
per frame and its in-node overhead with and without depth.

  python -m instructsam_ros.benchmark --depth --model default --threshold 0 --sizes 640x480 --seconds 6
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from instructsam_core.errors import UserError
from instructsam_ros.processes import start_child, stop_child

NAMESPACE = "/instructsam_bench"
INSTRUCTION = "red circles"  # a bare phrase: the streaming (single-forward) path from frame one


def hardware() -> str:
    """One line: CPU model and cores, GPU if any, torch build."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    return "; ".join(parts)


class Session:
    """The node process plus this process's publisher and result subscriber; `node_params`
    (`name:=value`) go to the node after the benchmark's own."""

    node_name = "instructsam_benchmark"

    def __init__(self, model: str, device: str, threshold: float, log_path: Path, namespace: str = NAMESPACE,
                 instruction: str = INSTRUCTION, node_params: tuple[str, ...] = ()) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from instructsam_ros.interfaces import InstanceSegmentation
        from instructsam_ros.dds.qos import instruction_qos, stream_qos

        repo_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p)}
        params = [f"model:={model}", f"device:={device}", f"threshold:={threshold}", "max_frame_age:=0.0",
                  "diagnostics_period:=5.0", *node_params]
        self._log = open(log_path, "w")
        self.proc = start_child(
            [sys.executable, "-m", "instructsam_ros.segment_node", "--ros-args", "-r", f"__ns:={namespace}",
             *(arg for param in params for arg in ("-p", param))],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        rclpy.init()
        self.node = rclpy.create_node(self.node_name, namespace=namespace)
        self.publisher = self.node.create_publisher(Image, "image", stream_qos("best_effort", 1))
        self.instruction = self.node.create_publisher(String, "instruction", instruction_qos())
        self.instruction.publish(String(data=instruction))
        self.lock = threading.Lock()
        self.received: dict[int, Any] = {}  # stamp -> what _on_result keeps of the result
        self.sub = self.node.create_subscription(InstanceSegmentation, "segmentation", self._on_result, stream_qos("reliable", 50))
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spinning = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        import rclpy

        while self._spinning and rclpy.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_result(self, msg) -> None:
        now = time.time_ns()
        key = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.lock:
            self.received[key] = (now, float(msg.model_latency), float(msg.processing_latency))

    def _matched(self) -> bool:
        """The node subscribes to what this process publishes, and publishes its results."""
        return self.publisher.get_subscription_count() > 0 and self.sub.get_publisher_count() > 0

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._matched():
            if self.proc.poll() is not None:
                raise UserError(f"the node exited during start-up; see {self._log.name}")
            if time.monotonic() > deadline:
                raise UserError(f"the node was not ready within {timeout:g} s; see {self._log.name}")
            time.sleep(0.1)

    def stream(self, frame_msg, rate: float, seconds: float, settle: float = 1.0) -> dict[str, float]:
        """Publish at `rate` for `seconds` (after `settle` s not counted) and summarise."""
        from builtin_interfaces.msg import Time

        sent: list[int] = []
        start = time.monotonic()
        total = int(round((settle + seconds) * rate))
        warm = int(round(settle * rate))
        for k in range(total):
            target = start + k / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ns = time.time_ns()
            frame_msg.header.stamp = Time(sec=ns // 10**9, nanosec=ns % 10**9)
            self.publisher.publish(frame_msg)
            if k >= warm:
                sent.append(ns)
        time.sleep(min(5.0, 2.0 + 2.0 / rate))  # results still in flight
        with self.lock:
            got = [(s, *self.received[s]) for s in sent if s in self.received]
        if not got:
            return {"rate": rate, "sent": len(sent), "answered": 0, "drop_fraction": 1.0}
        e2e = np.array([(r - s) / 1e9 for s, r, _, _ in got])
        model = np.array([m for _, _, m, _ in got])
        in_node = np.array([p for _, _, _, p in got])
        return {
            "rate": rate,
            "sent": len(sent),
            "answered": len(got),
            "drop_fraction": 1.0 - len(got) / len(sent),
            "e2e_median_ms": float(np.median(e2e) * 1e3),
            "e2e_p99_ms": float(np.percentile(e2e, 99) * 1e3),
            "model_median_ms": float(np.median(model) * 1e3),
            "overhead_median_ms": float(np.median(e2e - model) * 1e3),
            "in_node_overhead_median_ms": float(np.median(in_node - model) * 1e3),
        }

    def close(self) -> None:
        import rclpy

        self._spinning = False
        self._thread.join(timeout=5)
        stop_child(self.proc, "benchmark: segment node")
        self._log.close()
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        rclpy.try_shutdown()


def frame_message(width: int, height: int):
    from instructsam_ros.demo.run import synthetic_scene
    from instructsam_ros.messages.images import array_to_image_msg

    pixels, _, _ = synthetic_scene(3, height, width)
    msg = array_to_image_msg(pixels, "rgb8")
    msg.header.frame_id = "bench_camera"
    return msg


def peak_rate(session: Session, msg, low: float, high: float, seconds: float, steps: int) -> tuple[float, list[dict]]:
    """Highest rate in [low, high] with < 5 % drops, by bisection (`low` assumed to pass)."""
    runs = []
    best = 0.0
    for _ in range(steps):
        rate = (low + high) / 2 if best else low
        result = session.stream(msg, rate, seconds)
        runs.append(result)
        if result["drop_fraction"] < 0.05:
            best = max(best, rate)
            low = rate
        else:
            high = rate
        if best and high - low < 0.05 * high:
            break
    return best, runs


# ----------------------------------------------------------------------------- several cameras
def process_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in bytes (PSS 0 where /proc/PID/smaps_rollup is missing)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


class CameraSetup:
    """N cameras (cam0..camN-1 under NAMESPACE) served by one node or by N nodes, and this
    process's publishers and result subscribers for them. Both setups have the same topics."""

    def __init__(self, node, cameras: int, one_node: bool, model: str, device: str, threshold: float, log_dir: Path) -> None:
        from sensor_msgs.msg import Image

        from instructsam_ros.interfaces import InstanceSegmentation
        from instructsam_ros.dds.qos import stream_qos

        self.names = [f"cam{i}" for i in range(cameras)]
        self.one_node = one_node
        repo_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p)}
        common = ["-p", f"model:={model}", "-p", f"device:={device}", "-p", f"threshold:={threshold}",
                  "-p", "max_frame_age:=0.0", "-p", "diagnostics_period:=5.0", "-p", f"instruction:={INSTRUCTION}"]
        self.logs = []
        self.procs = []
        if one_node:
            commands = [(NAMESPACE, ["-p", f"cameras:=[{', '.join(self.names)}]", "-p", f"max_batch:={max(1, cameras)}"])]
        else:
            commands = [(f"{NAMESPACE}/{name}", []) for name in self.names]
        for k, (namespace, extra) in enumerate(commands):
            log = open(log_dir / f"node_{cameras}_{'one' if one_node else 'sep'}_{k}.log", "w")
            self.logs.append(log)
            self.procs.append(start_child(
                [sys.executable, "-m", "instructsam_ros.segment_node", "--ros-args", "-r", f"__ns:={namespace}", *common, *extra],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            ))
        self.node = node
        self.lock = threading.Lock()
        self.received: dict[str, dict[int, int]] = {name: {} for name in self.names}  # stamp -> receive ns
        self.publishers = [node.create_publisher(Image, f"{NAMESPACE}/{name}/image", stream_qos("best_effort", 1)) for name in self.names]
        self.subs = [node.create_subscription(InstanceSegmentation, f"{NAMESPACE}/{name}/segmentation",
                                              lambda msg, name=name: self._on_result(name, msg), stream_qos("reliable", 50))
                     for name in self.names]

    def _on_result(self, name: str, msg) -> None:
        now = time.time_ns()
        with self.lock:
            self.received[name][msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = now

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(p.get_subscription_count() == 0 for p in self.publishers) or any(s.get_publisher_count() == 0 for s in self.subs):
            if any(proc.poll() is not None for proc in self.procs):
                raise UserError(f"a node exited during start-up; see {self.logs[0].name}")
            if time.monotonic() > deadline:
                raise UserError(f"the nodes were not ready within {timeout:g} s; see {self.logs[0].name}")
            time.sleep(0.1)

    def stream(self, frame_msg, rate: float, seconds: float, settle: float = 1.0) -> dict:
        """Every camera publishes at `rate` for `settle` + `seconds` (only `seconds` counted)."""
        from builtin_interfaces.msg import Time

        sent: list[int] = []
        start = time.monotonic()
        total, warm = int(round((settle + seconds) * rate)), int(round(settle * rate))
        for k in range(total):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ns = time.time_ns()
            frame_msg.header.stamp = Time(sec=ns // 10**9, nanosec=ns % 10**9)
            for publisher in self.publishers:
                publisher.publish(frame_msg)
            if k >= warm:
                sent.append(ns)
        time.sleep(3.0)  # results still in flight
        per_camera = {}
        with self.lock:
            for name in self.names:
                got = [(self.received[name][s] - s) / 1e9 for s in sent if s in self.received[name]]
                per_camera[name] = {
                    "answered": len(got), "sent": len(sent), "results_per_s": len(got) / seconds,
                    "e2e_median_ms": float(np.median(got) * 1e3) if got else None,
                    "e2e_p99_ms": float(np.percentile(got, 99) * 1e3) if got else None,
                }
        return per_camera

    def memory(self) -> tuple[int, int]:
        usage = [process_memory(proc.pid) for proc in self.procs]
        return sum(r for r, _ in usage), sum(p for _, p in usage)

    def close(self) -> None:
        for proc in self.procs:
            stop_child(proc, "benchmark: segment node")
        for log in self.logs:
            log.close()
        for sub in self.subs:
            self.node.destroy_subscription(sub)
        for publisher in self.publishers:
            self.node.destroy_publisher(publisher)


def run_cameras(args: argparse.Namespace, model: str, model_name: str, scratch: Path) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    width, height = args.sizes[0]
    msg = frame_message(width, height)
    rclpy.init()
    node = rclpy.create_node("instructsam_benchmark")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinning = True

    def spin() -> None:
        while spinning and rclpy.ok():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    report = {"model": model_name, "device": args.device, "hardware": hardware(), "instruction": INSTRUCTION,
              "size": f"{width}x{height}", "rate": args.rate, "seconds": args.seconds,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"), "runs": []}
    try:
        for count in args.cameras:
            for one_node in (True, False):
                setup = CameraSetup(node, count, one_node, model, args.device, args.threshold, scratch)
                try:
                    setup.wait_ready(args.startup_timeout)
                    setup.stream(msg, 2.0, 2.0)  # warm-up of every camera's path (not counted)
                    per_camera = setup.stream(msg, args.rate, args.seconds)
                    rss, pss = setup.memory()
                finally:
                    setup.close()
                run = {"cameras": count, "setup": "one node" if one_node else (f"{count} separate nodes" if count > 1 else "1 separate node"), "per_camera": per_camera,
                       "results_per_s": sum(c["results_per_s"] for c in per_camera.values()), "rss": rss, "pss": pss}
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
    finally:
        spinning = False
        spinner.join(timeout=5)
        executor.shutdown(timeout_sec=1)
        node.destroy_node()
        rclpy.try_shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(cameras_markdown(report))
    return 0


def cameras_markdown(report: dict) -> str:
    lines = [
        f"Model: {report['model']}; device: {report['device']}; hardware: {report['hardware']}; "
        f"OMP_NUM_THREADS {report['omp_num_threads']}; {report['size']} rgb8 frames, every camera at {report['rate']:g} Hz "
        f"for {report['seconds']:g} s; instruction {report['instruction']!r}.",
        "",
        "| cameras | setup | results/s (all cameras) | results/s per camera (min-max) | answered | e2e median (ms), per camera | e2e p99 (ms), worst camera | RSS (MiB) | PSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        cams = list(run["per_camera"].values())
        rates = [c["results_per_s"] for c in cams]
        medians = ", ".join("-" if c["e2e_median_ms"] is None else f"{c['e2e_median_ms']:.0f}" for c in cams)
        p99 = [c["e2e_p99_ms"] for c in cams if c["e2e_p99_ms"] is not None]
        worst = f"{max(p99):.0f}" if p99 else "-"
        answered, sent = sum(c["answered"] for c in cams), sum(c["sent"] for c in cams)
        lines.append(
            f"| {run['cameras']} | {run['setup']} | {run['results_per_s']:.1f} | {min(rates):.1f}-{max(rates):.1f} | "
            f"{answered} / {sent} | {medians} | {worst} | {run['rss'] / 2**20:.0f} | {run['pss'] / 2**20:.0f} |"
        )
    return "\n".join(lines)


def _cameras(text: str) -> list[int]:
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"camera counts look like 1,2,4; got {text!r}") from None
    if any(c < 1 or c > 16 for c in counts):
        raise argparse.ArgumentTypeError(f"camera counts must be in 1..16, got {text}")
    return counts


def _sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            w, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"sizes look like 640x480,1280x720; got {item!r}") from None
        if not (16 <= w <= 4096 and 16 <= h <= 4096):
            raise argparse.ArgumentTypeError(f"size {item} is outside 16x16 .. 4096x4096")
        sizes.append((w, h))
    return sizes


def _rates(text: str) -> list[float]:
    rates = [float(v) for v in text.split(",")]
    if any(r <= 0 or r > 1000 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be in (0, 1000] Hz, got {text}")
    return rates


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", "42")  # a domain of its own unless the user picks one
    from instructsam_ros.dds.profiles import use_large_data_profile

    use_large_data_profile()
    scratch = Path(tempfile.mkdtemp(prefix="instructsam_bench_"))
    model = args.model
    if model == "tiny":
        from instructsam_core.tiny import write_tiny_model

        model = str(write_tiny_model(scratch / "tiny", seed=0))
        model_name = "tiny random model (write_tiny_model, seed 0)"
    else:
        from instructsam_core.model_paths import resolve_model_dir

        resolve_model_dir(model)  # a clear error before any process starts
        model_name = model
    if args.cameras:
        return run_cameras(args, model, model_name, scratch)
    if args.depth:
        from instructsam_ros.benchmark.depth import markdown as depth_markdown
        from instructsam_ros.benchmark.depth import run_depth

        report = run_depth(args, model, model_name, scratch, hardware())
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        print(depth_markdown(report))
        return 0
    session = Session(model, args.device, args.threshold, scratch / "node.log")
    report = {"model": model_name, "device": args.device, "hardware": hardware(), "instruction": INSTRUCTION, "sizes": []}
    try:
        session.wait_ready(args.startup_timeout)
        for width, height in args.sizes:
            msg = frame_message(width, height)
            # Warm this size up and estimate the model's capacity from a slow stream.
            probe = session.stream(msg, 2.0, 2.0)
            if not probe["answered"]:
                raise UserError(f"no results at {width}x{height}; see {scratch / 'node.log'}")
            entry = {"size": f"{width}x{height}", "fixed_rates": [], "peak": None}
            for rate in args.rates:
                result = session.stream(msg, rate, args.seconds)
                entry["fixed_rates"].append(result)
                print(json.dumps({"size": entry["size"], **result}), flush=True)
            capacity = 1000.0 / max(probe["e2e_median_ms"], 1e-3)
            best, runs = peak_rate(session, msg, max(0.5, 0.5 * capacity), 2.0 * capacity, args.seconds, args.peak_steps)
            entry["peak"] = {"rate": best, "runs": runs}
            print(json.dumps({"size": entry["size"], "peak_rate_under_5pct_drops": best}), flush=True)
            report["sizes"].append(entry)
    finally:
        session.close()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [
        f"Model: {report['model']}; device: {report['device']}; hardware: {report['hardware']}; "
        f"instruction {report['instruction']!r} (streaming single-forward path).",
        "",
        "| input | rate (Hz) | answered / sent | drops | e2e median (ms) | e2e p99 (ms) | model median (ms) | overhead e2e-model (ms) | in-node overhead (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["sizes"]:
        for r in entry["fixed_rates"]:
            if not r["answered"]:
                lines.append(f"| {entry['size']} | {r['rate']:g} | 0 / {r['sent']} | 100 % | - | - | - | - | - |")
                continue
            lines.append(
                f"| {entry['size']} | {r['rate']:g} | {r['answered']} / {r['sent']} | {r['drop_fraction'] * 100:.1f} % | "
                f"{r['e2e_median_ms']:.1f} | {r['e2e_p99_ms']:.1f} | {r['model_median_ms']:.1f} | "
                f"{r['overhead_median_ms']:.1f} | {r['in_node_overhead_median_ms']:.1f} |"
            )
    lines.append("")
    for entry in report["sizes"]:
        lines.append(f"Peak rate with < 5 % drops at {entry['size']}: {entry['peak']['rate']:.1f} Hz")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructsam_ros.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (written on the fly), 'default', or a model directory")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--sizes", type=_sizes, default=_sizes("640x480,1280x720"))
    parser.add_argument("--rates", type=_rates, default=_rates("10,30"))
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per rate")
    parser.add_argument("--peak-steps", type=int, default=5, help="bisection steps for the peak rate")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--json", help="also write the full report as JSON here")
    parser.add_argument("--cameras", type=_cameras, help="camera counts, e.g. 1,2,4: one node of N cameras against N "
                        "nodes of one camera (at the first of --sizes, every camera at --rate)")
    parser.add_argument("--rate", type=float, default=30.0, help="with --cameras: frames per second of every camera")
    parser.add_argument("--depth", action="store_true", help="measure the 3-D step: colour only, colour + depth and "
                        "colour + depth + point cloud in the same run (see benchmark_depth)")
    parser.add_argument("--depth-rate", type=float, default=5.0, help="with --depth: frames per second (below the model's capacity)")
    parser.add_argument("--repeats", type=int, default=3, help="with --depth: rounds of the three phases")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.seconds <= 0 or args.peak_steps < 1:
        parser.error("--seconds must be > 0 and --peak-steps >= 1")
    if not 0 < args.rate <= 1000:
        parser.error(f"--rate must be in (0, 1000] Hz, got {args.rate}")
    if not 0 < args.depth_rate <= 1000 or args.repeats < 1:
        parser.error("--depth-rate must be in (0, 1000] Hz and --repeats >= 1")
    if args.depth and args.cameras:
        parser.error("--depth and --cameras are separate measurements: give one of them")
    try:
        return run(args)
    except UserError as error:
        print(f"benchmark: error: {error}", file=sys.stderr)
        return 2

