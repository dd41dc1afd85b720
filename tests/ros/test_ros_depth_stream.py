"""3-D instances over real DDS: segment_node (embedded default model) with depth input, fed a
synthetic RGB-D scene of known geometry, in its own process (one node for the module).

The scene: two flat squares facing the camera, 10 cm at 0.60 m and 12 cm at 0.75 m, before a
wall at 1.5 m, seen by a 640x480 camera with a 40 degree horizontal field of view. The model
finds both as "squares"; its masks are coarse (a few pixels off at the edges, IoU ~0.8), and
the 3-D estimates must still land within 1 cm (centre) and 2 cm (size) of the truth. Every way
depth can fail (missing, late, early, wrong encoding, another aspect ratio, all-zero K) must
leave the colour result intact, report the cause in the result and in /diagnostics, and invent
no position. The node keeps one depth image in its queue (depth_queue_size 1), so a depth image
stamped ahead of the colour frame is classified as early rather than unmatched. A second node
(tiny model, two cameras, compressed input) checks per-camera compressed depth.
"""
from __future__ import annotations

import array
import time

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from instructsam_ros.depth.conversions import cloud_msg_to_array
from instructsam_ros.messages.instances import msg_to_mask
from instructsam_ros.demo.depth_scenes import Plate, pinhole, render, to_16uc1, with_holes
from rosprobe import Probe, camera_info, depth_image, stamp_ns, unique_stamp, wait_for

NS = "/depth_test"
K = pinhole(640, 480, 40.0)
PLATES = [Plate((-0.12, 0.0, 0.60), (0.10, 0.10), (220, 40, 40)), Plate((0.09, 0.0, 0.75), (0.12, 0.12), (40, 160, 60))]
FRAME = render(PLATES, K, wall_depth=1.5)
HALF_K = pinhole(320, 240, 40.0)  # the same camera at half resolution
HALF = render(PLATES, HALF_K, wall_depth=1.5)
CENTRE_TOLERANCE = 0.01
SIZE_TOLERANCE = 0.02
RELIABLE_1 = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def node(start_node):
    process = start_node(NS, {
        "model": "default", "device": "cpu", "threshold": 0.3, "max_frame_age": 5.0, "diagnostics_period": 0.2,
        "warmup": False, "depth": True, "depth_sync_tolerance": 0.01, "depth_queue_size": 1,
    })
    yield process
    alive = process.alive()
    process.stop()
    assert alive, "the node died during the module:\n" + process.log()[-4000:]


class DepthProbe:
    """The colour probe plus depth, CameraInfo and point-cloud topics of the node."""

    def __init__(self, harness, probe: Probe) -> None:
        node = harness.node
        self.harness, self.probe = harness, probe
        self.depth_pub = node.create_publisher(Image, f"{NS}/depth/image", RELIABLE_1)
        self.info_pub = node.create_publisher(CameraInfo, f"{NS}/depth/camera_info", RELIABLE_1)
        self.clouds: list[PointCloud2] = []
        self.cloud_sub = node.create_subscription(PointCloud2, f"{NS}/instance_points", self.clouds.append, 10)
        self.info = camera_info(K)

    def close(self) -> None:
        node = self.harness.node
        node.destroy_publisher(self.depth_pub)
        node.destroy_publisher(self.info_pub)
        node.destroy_subscription(self.cloud_sub)

    def send(self, depth: Image | None, stamp_offset_s: float = 0.0, timeout: float = 60.0, rgb: np.ndarray | None = None):
        """Publish CameraInfo, the depth image (stamped `stamp_offset_s` from the colour frame)
        and the colour frame (`rgb`, FRAME's by default), again every 2 s until the colour
        frame's result arrives."""
        colour = self.probe.frame(FRAME.rgb if rgb is None else rgb, frame_id="colour_optical")
        if depth is not None:
            ns = stamp_ns(colour.header.stamp) + int(round(stamp_offset_s * 1e9))
            depth.header.stamp.sec, depth.header.stamp.nanosec = ns // 10**9, ns % 10**9
            depth.header.frame_id = "depth_optical"

        def depth_first(stamp) -> None:
            self.info.header.stamp = stamp
            self.info_pub.publish(self.info)
            if depth is not None:
                self.depth_pub.publish(depth)
            time.sleep(0.02)

        return self.probe.request(colour, timeout=timeout, before_each=depth_first)


@pytest.fixture(scope="module")
def depth(node, harness):
    probe = Probe(harness, NS)
    probe.instruct("squares")
    probe.wait_connected(timeout=120)
    d = DepthProbe(harness, probe)
    wait_for(lambda: d.depth_pub.get_subscription_count() > 0 and d.info_pub.get_subscription_count() > 0, 30,
             "the node subscribing to depth/image and depth/camera_info")
    yield d
    d.close()
    probe.close()


def plate_of(instance, height: int = 480, width: int = 640) -> int | None:
    """The plate an instance's mask covers most (IoU > 0.5), else None."""
    mask = msg_to_mask(instance, height, width)
    ious = [(mask & truth).sum() / (mask | truth).sum() for truth in FRAME.masks]
    best = int(np.argmax(ious))
    return best if ious[best] > 0.5 else None


def assert_located(result) -> dict[int, tuple[float, float]]:
    """Both plates found and located within tolerance; returns the errors per plate (metres)."""
    assert result.depth_status == result.DEPTH_OK, result.depth_problem
    assert result.depth_header.frame_id == "depth_optical"
    errors = {}
    for instance in result.instances:
        plate = plate_of(instance)
        if plate is None or plate in errors:
            continue
        location = instance.location
        assert location.status == location.OK
        center, size = PLATES[plate].box()
        got_center = (location.center.x, location.center.y, location.center.z)
        got_size = (location.box_size.x, location.box_size.y, location.box_size.z)
        center_error = float(np.max(np.abs(np.subtract(got_center, center))))
        size_error = float(np.max(np.abs(np.subtract(got_size, size))))
        assert center_error <= CENTRE_TOLERANCE, (plate, got_center, center)
        assert size_error <= SIZE_TOLERANCE, (plate, got_size, size)
        assert 0 < location.inlier_pixels <= location.valid_pixels <= location.mask_pixels
        errors[plate] = (center_error, size_error)
    assert sorted(errors) == [0, 1], f"plates found: {sorted(errors)}"
    return errors


def assert_nothing_invented(result) -> None:
    for instance in result.instances:
        location = instance.location
        assert location.status == location.NO_DEPTH
        assert (location.center.x, location.center.y, location.center.z, location.box_size.x) == (0.0, 0.0, 0.0, 0.0)


def test_without_depth_frames_are_segmented_and_3d_is_reported_missing(depth):
    before = depth.probe.counter("3d_no_depth")
    result = depth.send(None)
    assert result.instances and result.depth_status == result.DEPTH_MISSING
    assert "no depth image" in result.depth_problem
    assert_nothing_invented(result)
    wait_for(lambda: int(depth.probe.latest_diagnostics()["3d_no_depth"]) > before, 20, "3d_no_depth to count the frame")


def test_16uc1_with_holes_locates_each_square(depth):
    depth.clouds.clear()
    millimetres = to_16uc1(with_holes(FRAME.depth, 0.1, seed=1))  # 10 % zeros
    result = depth.send(depth_image(millimetres, "16UC1"))
    assert_located(result)
    assert stamp_ns(result.depth_header.stamp) == stamp_ns(result.header.stamp)
    # The cloud of this frame: the depth image's header, every located instance's inliers.
    cloud_msg = wait_for(lambda: next((c for c in depth.clouds if stamp_ns(c.header.stamp) == stamp_ns(result.header.stamp)),
                                      None), 20, "instance_points")
    assert cloud_msg.header.frame_id == "depth_optical"
    cloud = cloud_msg_to_array(cloud_msg)
    counts = {int(i): int(n) for i, n in zip(*np.unique(cloud["instance_id"], return_counts=True))}
    assert counts == {inst.id: inst.location.inlier_pixels for inst in result.instances
                      if inst.location.status == inst.location.OK}
    assert np.isfinite(cloud["z"]).all() and (cloud["z"] > 0.5).all() and (cloud["z"] < 0.8).all()


def test_32fc1_with_nan_and_inf_locates_each_square(depth):
    metres = with_holes(with_holes(FRAME.depth, 0.05, seed=2, invalid=np.nan), 0.05, seed=3, invalid=np.inf)
    result = depth.send(depth_image(metres, "32FC1"))
    assert_located(result)
    for instance in result.instances:
        if instance.location.status == instance.location.OK:
            assert instance.location.valid_pixels < 0.95 * instance.location.mask_pixels


def test_half_resolution_depth_is_used_through_its_own_camera_info(depth):
    depth.info = camera_info(HALF_K)
    try:
        result = depth.send(depth_image(HALF.depth, "32FC1"))
    finally:
        depth.info = camera_info(K)
    assert_located(result)
    # Masks of the 640x480 frame sampled onto the 320x240 depth grid: a quarter of the pixels.
    for instance in result.instances:
        if instance.location.status == instance.location.OK:
            assert instance.location.mask_pixels == pytest.approx(instance.area / 4, rel=0.1)


def test_an_object_without_readings_of_its_own_is_not_given_the_walls_depth(depth):
    """The 13 cm square at 0.65 m that the depth camera cannot see (IR-black, glossy, too close:
    every reading on it is 0) before a wall at 2.5 m, 60 degree camera. The model's mask spills
    past the square's edge onto the wall, whose readings are there: more of them than
    depth_min_valid_pixels, a small share of the mask. The same scene with its readings is
    located within 2 cm."""
    k = pinhole(640, 480, 60.0)
    scene = render([Plate((0.0, 0.0, 0.65), (0.13, 0.13), (40, 160, 60))], k, wall_depth=2.5)
    truth = scene.masks[0]
    blind = scene.depth.copy()
    blind[truth] = 0.0
    depth.info = camera_info(k)
    try:
        seen = depth.send(depth_image(to_16uc1(scene.depth), "16UC1"), rgb=scene.rgb)
        unseen = depth.send(depth_image(to_16uc1(blind), "16UC1"), rgb=scene.rgb)
    finally:
        depth.info = camera_info(K)

    def the_square(result):
        assert result.depth_status == result.DEPTH_OK, result.depth_problem
        masks = [(instance, msg_to_mask(instance, 480, 640)) for instance in result.instances]
        found = [(i, m) for i, m in masks if (m & truth).sum() / (m | truth).sum() > 0.5]
        assert found, "the model did not find the square"
        return found[0]

    instance, mask = the_square(seen)
    location = instance.location
    assert location.status == location.OK
    got = (location.center.x, location.center.y, location.center.z)
    assert float(np.max(np.abs(np.subtract(got, (0.0, 0.0, 0.65))))) <= 0.02, got
    got_size = (location.box_size.x, location.box_size.y, location.box_size.z)
    assert float(np.max(np.abs(np.subtract(got_size, (0.13, 0.13, 0.0))))) <= SIZE_TOLERANCE, got_size
    instance, mask = the_square(unseen)
    location = instance.location
    spill = int((mask & ~truth).sum())  # the mask's pixels on the wall: the only readings it has
    assert location.status == location.TOO_FEW_VALID
    assert (location.mask_pixels, location.valid_pixels, location.inlier_pixels) == (instance.area, spill, 0)
    assert spill > 20, "the spill alone passes depth_min_valid_pixels: the share must be what refuses it"
    assert (location.center.x, location.center.y, location.center.z, location.box_size.x) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("offset_s, cause, words", [(-0.3, "depth_late", "older"), (0.3, "depth_early", "newer")])
def test_depth_stamped_outside_the_tolerance_is_not_paired(depth, offset_s, cause, words):
    before = depth.probe.counter(f"3d_{cause}")
    result = depth.send(depth_image(to_16uc1(FRAME.depth), "16UC1"), stamp_offset_s=offset_s)
    assert result.instances and result.depth_status == result.DEPTH_MISSING and words in result.depth_problem
    assert_nothing_invented(result)
    wait_for(lambda: int(depth.probe.latest_diagnostics()[f"3d_{cause}"]) > before, 20, f"3d_{cause} to count the frame")


def test_unusable_depth_is_rejected_per_cause_and_the_node_recovers(depth):
    good = depth_image(to_16uc1(FRAME.depth), "16UC1")
    cases = [
        ("depth_encoding", depth_image(FRAME.rgb, "rgb8"), None, "not a depth encoding"),
        ("resolution_mismatch", depth_image(to_16uc1(FRAME.depth[:360]), "16UC1"), None, "aspect"),
        ("camera_info_malformed", good, [0.0] * 9, "all zeros"),
    ]
    for cause, image, k, words in cases:
        before = depth.probe.counter(f"3d_{cause}")
        if k is not None:
            depth.info.k = k
        try:
            result = depth.send(image)
        finally:
            depth.info = camera_info(K)
        assert result.instances and result.depth_status == result.DEPTH_REJECTED, cause
        assert words in result.depth_problem, result.depth_problem
        assert_nothing_invented(result)
        wait_for(lambda: int(depth.probe.latest_diagnostics()[f"3d_{cause}"]) > before, 20, f"3d_{cause} to count")
    assert_located(depth.send(depth_image(to_16uc1(FRAME.depth), "16UC1")))


def test_each_camera_pairs_its_own_compressed_depth(start_node, harness, tiny_model_dir):
    """Two cameras of one node with use_compressed:=true: `left` gets JPEG colour on
    left/image/compressed and compressedDepth png on left/depth/image/compressedDepth, `right`
    colour only. Left's instances are located from real readings (tiny model: any masks);
    right's 3-D is missing, counted in right's own /diagnostics status, not left's."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    from instructsam_ros.depth.conversions import encode_compressed_depth

    ns = "/depth_cameras_test"
    process = start_node(ns, {"model": str(tiny_model_dir), "device": "cpu", "threshold": 0.0, "max_frame_age": 5.0,
                              "warmup": False, "use_compressed": True, "depth": True, "depth_min_valid_pixels": 1,
                              "cameras": ["left", "right"], "diagnostics_period": 0.2})
    probes = {name: Probe(harness, ns, camera=name) for name in ("left", "right")}
    node = harness.node
    colour_pubs = {name: node.create_publisher(CompressedImage, f"{ns}/{name}/image/compressed", RELIABLE_1)
                   for name in probes}
    depth_pub = node.create_publisher(CompressedImage, f"{ns}/left/depth/image/compressedDepth", RELIABLE_1)
    info_pub = node.create_publisher(CameraInfo, f"{ns}/left/depth/camera_info", RELIABLE_1)
    try:
        for probe in probes.values():
            probe.instruct("red circles")
        publishers = [*colour_pubs.values(), depth_pub, info_pub]
        wait_for(lambda: min(p.get_subscription_count() for p in publishers) > 0, 120,
                 "the node subscribing to each camera's image/compressed and left's depth topics")
        # Discovery reports each topic's endpoints on its own: right's depth subscription may
        # reach this process's graph after left's topics have matched.
        wait_for(lambda: node.count_subscribers(f"{ns}/right/depth/image/compressedDepth") == 1, 30,
                 "the node subscribing to right's depth/image/compressedDepth")
        small_k = pinhole(160, 120, 40.0)
        small = render(PLATES, small_k, wall_depth=1.5)
        colour = CompressedImage(format="jpeg")
        colour.data = array.array("B", cv2.imencode(".jpg", small.rgb[:, :, ::-1])[1].tobytes())
        fmt, data = encode_compressed_depth(to_16uc1(small.depth), "16UC1")
        depth_msg = CompressedImage(format=fmt)
        depth_msg.data = array.array("B", data)
        depth_msg.header.frame_id = "left_depth_optical"
        results = {}
        deadline = time.monotonic() + 120
        while len(results) < 2 and time.monotonic() < deadline:
            stamp = unique_stamp()
            colour.header.stamp = depth_msg.header.stamp = stamp
            info_pub.publish(camera_info(small_k))
            depth_pub.publish(depth_msg)
            time.sleep(0.02)
            for name, publisher in colour_pubs.items():
                if name not in results:
                    publisher.publish(colour)
            time.sleep(1.0)
            for name, probe in probes.items():
                if name not in results and probe.result_for(stamp) is not None:
                    results[name] = probe.result_for(stamp)
        assert len(results) == 2, "no result for both cameras:\n" + process.log()[-3000:]
        left, right = results["left"], results["right"]
        assert left.depth_status == left.DEPTH_OK and left.depth_header.frame_id == "left_depth_optical"
        assert left.instances and left.depth_latency > 0
        for instance in left.instances:
            location = instance.location
            assert location.mask_pixels == instance.area  # same grid: every mask pixel has a reading
            assert location.status == location.OK and 0.5 < location.center.z < 1.6
        assert right.instances and right.depth_status == right.DEPTH_MISSING
        assert_nothing_invented(right)
        wait_for(lambda: int(probes["right"].latest_diagnostics()["3d_no_depth"]) > 0, 20, "right's 3d_no_depth")
        left_values = probes["left"].latest_diagnostics()
        assert int(left_values["3d_paired"]) > 0 and left_values["3d_no_depth"] == "0"
    finally:
        for publisher in (*colour_pubs.values(), depth_pub, info_pub):
            node.destroy_publisher(publisher)
        for probe in probes.values():
            probe.close()
        alive = process.alive()
        process.stop()
    assert alive, process.log()[-3000:]
