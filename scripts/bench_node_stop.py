"""How long segment_node takes to exit after SIGTERM, while loading its model or while streaming.

Each run starts a node process (tiny random model unless --model is given), sends SIGTERM at
the chosen moment and times the exit, reporting exit status too:
  loading    as soon as the node logs "loading model" (imports, weights and warm-up under way)
  streaming  after 3 s of 640x480 rgb8 frames at 30 Hz, with results coming back

  python scripts/bench_node_stop.py --mode streaming --runs 10 [--model default]
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _node(model: str, namespace: str, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "instructsam_ros.segment_node", "--ros-args", "-r", f"__ns:={namespace}",
            "-p", f"model:={model}", "-p", "device:=cpu", "-p", "warmup:=true", "-p", "max_frame_age:=5.0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen) -> float:
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return time.monotonic() - sent


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_node_stop: timed out waiting for {what}")
        time.sleep(0.005)


def run_loading(model: str, log: Path, namespace: str) -> tuple[float, int]:
    process = _node(model, namespace, log)
    _wait(lambda: "loading model" in log.read_text(errors="replace"), 120, "the node to start loading")
    return _stop(process), process.returncode


def run_streaming(model: str, log: Path, namespace: str, harness) -> tuple[float, int]:
    from rosprobe import Probe, test_scene

    probe = Probe(harness, namespace)
    probe.instruct("red circles")
    process = _node(model, namespace, log)
    stop = threading.Event()
    try:
        probe.wait_connected(timeout=120)
        probe.wait_instruction("red circles", test_scene(480, 640), timeout=120)

        def camera() -> None:
            while not stop.is_set():
                probe.image_pub.publish(probe.frame(test_scene(480, 640)))
                time.sleep(1 / 30)

        thread = threading.Thread(target=camera, daemon=True)
        thread.start()
        time.sleep(3.0)
        seconds = _stop(process)
    finally:
        stop.set()
        probe.close()
        if process.poll() is None:
            process.kill()
    return seconds, process.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("loading", "streaming"), required=True)
    parser.add_argument("--runs", type=int, default=10, help="node processes to start and stop (1-100)")
    parser.add_argument("--model", default="tiny", help="'tiny' (written on the fly), 'default', or a model directory")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be in 1..100")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", "44")
    from instructsam_ros.dds.profiles import use_large_data_profile

    use_large_data_profile()  # this process, and through the environment the node
    sys.path.insert(0, str(REPO / "tests" / "ros"))
    work = Path(tempfile.mkdtemp(prefix="bench_node_stop_"))
    model = args.model
    if model == "tiny":
        from instructsam_core.tiny import write_tiny_model

        model = str(write_tiny_model(work / "tiny", seed=0))
    harness = None
    if args.mode == "streaming":
        from rosprobe import Harness

        harness = Harness()
    times, statuses = [], []
    try:
        for k in range(args.runs):
            log = work / f"node_{k}.log"
            namespace = f"/bench_stop_{k}"
            seconds, status = (run_loading(model, log, namespace) if args.mode == "loading"
                               else run_streaming(model, log, namespace, harness))
            times.append(seconds)
            statuses.append(status)
            print(f"run {k}: stopped in {seconds:.2f} s, exit status {status}", flush=True)
    finally:
        if harness is not None:
            harness.close()
    print(f"{args.mode}, model {args.model}: stop median {statistics.median(times):.2f} s, max {max(times):.2f} s "
          f"over {len(times)} runs; exit statuses {sorted(set(statuses))}; logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
