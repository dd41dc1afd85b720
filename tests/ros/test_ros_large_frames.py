"""Frames over 16 MiB (4000x3000 and 4096x2160 rgb8) reach the node with the large-frames profile.

The packaged default profile carries messages up to 16 MiB; a 4000x3000 rgb8 frame is 34 MiB.
Here the node and a camera process both use config/fastdds_large_frames.xml, as its README
section says; the test process (16 MiB profile) only receives the node's small results. What
the profile itself promises is checked between two processes of its own, without the node:
every frame arrives, the first one after the subscriber connected included.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from instructsam_ros.dds.profiles import LARGE_FRAMES_PROFILE, profile_variables
from rosprobe import REPO, Probe, wait_for

NS = "/large_frames_test"
SIZES = ("4000x3000", "4096x2160")
HERE = Path(__file__).parent


def test_the_profile_delivers_every_large_frame_the_first_included(tmp_path):
    """4000x3000 (552 fragments) then 4096x4096 rgb8 (48 MiB), best effort at 2 Hz, each size
    larger than all before: with Fast DDS's 512-message port queue the first of each was lost
    (dds/profiles.py); with the profile's 4096 every frame arrives."""
    # A domain of their own (the session's + 100, still loopback only): no participant or
    # shared-memory port of an earlier process of the suite there, as on a freshly started robot.
    env = {**os.environ, "PYTHONPATH": str(REPO), "ROS_DOMAIN_ID": str(int(os.environ["ROS_DOMAIN_ID"]) % 100 + 100),
           **{name: str(LARGE_FRAMES_PROFILE) for name in profile_variables()}}
    topic = "/large_frames_link"
    receiver = subprocess.Popen([sys.executable, str(HERE / "receive_frames.py"), topic, "60", "3"], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sender = subprocess.run([sys.executable, str(HERE / "publish_frames.py"), topic, "4000x3000,4096x4096", "1.2",
                                 "2", "1.0"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert sender.returncode == 0, sender.stdout[-2000:] + sender.stderr[-2000:]
        out, _ = receiver.communicate(timeout=90)
    finally:
        if receiver.poll() is None:
            receiver.kill()
    sent = [json.loads(line) for line in sender.stdout.splitlines() if line.startswith("{")]
    assert [entry["size"] for entry in sent].count("4000x3000") >= 2 and sent[-1]["size"] == "4096x4096"
    received = json.loads(out.strip().splitlines()[-1])
    assert received == [entry["stamp_ns"] for entry in sent], f"{len(received)} of {len(sent)} frames arrived"


def test_large_frames_profile_delivers_4000x3000_and_4096x2160_rgb8(start_node, tiny_model_dir, harness, tmp_path):
    profile = {name: str(LARGE_FRAMES_PROFILE) for name in profile_variables()}
    probe = Probe(harness, NS)
    probe.instruct("red circle")
    # Threshold 1: no instances, so every result is small whatever the frame size.
    node = start_node(NS, {"model": str(tiny_model_dir), "device": "cpu", "warmup": False, "threshold": 1.0,
                           "max_frame_age": 5.0}, env=profile)
    camera = None
    try:
        wait_for(lambda: "images up to 64 MiB" in node.log(), 90, "the node to report the large-frames profile")
        probe.wait_connected(timeout=60)
        out = open(tmp_path / "camera.jsonl", "w")
        camera = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("publish_frames.py")), f"{NS}/image", ",".join(SIZES), "4", "2"],
            env={**os.environ, **profile, "PYTHONPATH": str(REPO)}, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )
        assert camera.wait(timeout=120) == 0, (tmp_path / "camera.jsonl").read_text()[-2000:]
        out.close()
        sent = [json.loads(line) for line in (tmp_path / "camera.jsonl").read_text().splitlines() if line.startswith("{")]

        def answered(size: str) -> list:
            stamps = {entry["stamp_ns"] for entry in sent if entry["size"] == size}
            return [r for r in list(probe.results) if r.header.stamp.sec * 10**9 + r.header.stamp.nanosec in stamps]

        for size in SIZES:
            results = wait_for(lambda: answered(size), 30, f"a result for a {size} frame")
            width, height = (int(v) for v in size.split("x"))
            assert (results[0].width, results[0].height, results[0].header.frame_id) == (width, height, size)
    finally:
        if camera is not None and camera.poll() is None:
            camera.kill()
        probe.close()
        node.stop()


def test_the_node_warns_when_its_profile_cannot_queue_the_first_large_frame(start_node, tiny_model_dir, tmp_path):
    """A profile of the user's own with a large segment but Fast DDS's default port queue."""
    mine = tmp_path / "mine.xml"
    mine.write_text(LARGE_FRAMES_PROFILE.read_text().replace("<port_queue_capacity>4096</port_queue_capacity>", ""))
    node = start_node("/large_frames_warning", {"model": str(tiny_model_dir), "device": "cpu", "warmup": False},
                      env={name: str(mine) for name in profile_variables()})
    try:
        wait_for(lambda: "images up to 64 MiB" in node.log(), 90, "the node to report the profile")
        wait_for(lambda: "port_queue_capacity to 1028 or more" in node.log(), 10, "the port queue warning")
        assert "[WARN]" in next(line for line in node.log().splitlines() if "port_queue_capacity" in line)
    finally:
        node.stop()

