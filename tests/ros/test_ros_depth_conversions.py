"""Depth images, CameraInfo and 3-D output as rclpy messages (depth.conversions, depth.step),
on hand-built messages: every way a depth input can be wrong is refused with its cause."""
from __future__ import annotations

import array

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from instructsam_ros.depth.conversions import (
    camera_info_intrinsics,
    cloud_msg_to_array,
    compressed_depth_to_array,
    depth_image_to_array,
    encode_compressed_depth,
    point_cloud_msg,
)
from instructsam_ros.depth.geometry import BadDepthError, DepthSettings, InstanceLocation
from instructsam_ros.depth.step import DEPTH_OK, DEPTH_REJECTED, DepthInput, apply_depth
from instructsam_ros.interfaces import Instance, InstanceSegmentation
from instructsam_ros.demo.depth_scenes import Plate, pinhole, render, to_16uc1

MAX = 16_777_216


def depth_msg(pixels: np.ndarray, encoding: str, big_endian: bool = False, pad: int = 0, sec: int = 5) -> Image:
    dtype = pixels.dtype.newbyteorder(">" if big_endian else "<")
    rows = pixels.astype(dtype).view(np.uint8).reshape(pixels.shape[0], -1)
    if pad:
        rows = np.hstack([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)])
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, is_bigendian=int(big_endian),
                step=rows.shape[1])
    msg.header.stamp = Time(sec=sec, nanosec=0)
    msg.header.frame_id = "depth_optical"
    msg.data = array.array("B", rows.tobytes())
    return msg


def info_msg(k, width: int = 4, height: int = 3) -> CameraInfo:
    msg = CameraInfo(width=width, height=height)
    msg.k = [float(v) for v in k]
    return msg


MM = np.array([[0, 1000, 2000, 65535], [1, 2, 3, 4], [500, 600, 700, 800]], np.uint16)


@pytest.mark.parametrize("big_endian, pad", [(False, 0), (True, 0), (False, 6), (True, 2)])
def test_16uc1_in_either_byte_order_and_with_row_padding(big_endian, pad):
    depth, scale = depth_image_to_array(depth_msg(MM, "16UC1", big_endian, pad), MAX)
    assert scale == 0.001 and depth.dtype.isnative
    np.testing.assert_array_equal(depth, MM)


def test_32fc1_keeps_nan_and_infinity_for_the_geometry_to_exclude():
    metres = np.array([[1.5, np.nan], [np.inf, 0.25]], np.float32)
    depth, scale = depth_image_to_array(depth_msg(metres, "32FC1", big_endian=True), MAX)
    assert scale == 1.0
    np.testing.assert_array_equal(depth, metres)


@pytest.mark.parametrize("change, kind, words", [
    (dict(encoding="rgb8"), "depth_encoding", "not a depth encoding"),
    (dict(encoding="mono16"), "depth_encoding", "16UC1 (millimetres) or 32FC1 (metres)"),
    (dict(step=6), "depth_malformed", "shorter than a row"),
    (dict(height=4), "depth_malformed", "expected step x height"),
    (dict(width=0, height=0), "depth_malformed", "empty depth image"),
])
def test_bad_depth_images_are_refused_with_their_cause(change, kind, words):
    msg = depth_msg(MM, "16UC1")
    for name, value in change.items():
        setattr(msg, name, value)
    with pytest.raises(BadDepthError) as error:
        depth_image_to_array(msg, MAX)
    assert error.value.kind == kind and words in str(error.value)


def compressed(depth: np.ndarray, encoding: str) -> CompressedImage:
    fmt, data = encode_compressed_depth(depth, encoding)
    msg = CompressedImage(format=fmt)
    msg.data = array.array("B", data)
    return msg


def test_compressed_depth_png_decodes_as_image_transport_writes_it():
    msg = compressed(MM, "16UC1")
    assert msg.format == "16UC1; compressedDepth png"
    depth, scale = compressed_depth_to_array(msg, MAX)
    np.testing.assert_array_equal(depth, MM)
    assert scale == 0.001
    metres = np.array([[0.5, 1.0, np.nan], [2.0, 4.0, 12.0]], np.float32)
    depth, scale = compressed_depth_to_array(compressed(metres, "32FC1"), MAX)
    # Inverse-depth quantisation (depth_quantization 100, depth_max 10): relative error below
    # z / (A + z) with A = 100 x 101; beyond depth_max and NaN come back as NaN (no reading).
    finite = np.isfinite(metres) & (metres < 10)
    np.testing.assert_allclose(depth[finite], metres[finite], rtol=5e-4)
    assert np.isnan(depth[~finite]).all() and scale == 1.0


@pytest.mark.parametrize("fmt, data, kind, words", [
    ("png", None, "depth_encoding", "not image_transport's compressedDepth"),
    ("16UC1; compressedDepth rvl", None, "depth_encoding", "only compressedDepth png"),
    ("8UC3; compressedDepth png", None, "depth_encoding", "not a depth encoding"),
    ("16UC1; compressedDepth png", b"\x00" * 12, "depth_malformed", "no room"),
    ("16UC1; compressedDepth png", b"\x00" * 12 + b"not a png", "depth_malformed", "could not be decoded"),
])
def test_bad_compressed_depth_is_refused_with_its_cause(fmt, data, kind, words):
    msg = compressed(MM, "16UC1")
    msg.format = fmt
    if data is not None:
        msg.data = array.array("B", data)
    with pytest.raises(BadDepthError) as error:
        compressed_depth_to_array(msg, MAX)
    assert error.value.kind == kind and words in str(error.value)


def test_camera_info_roi_moves_the_principal_point():
    msg = info_msg([500, 0, 320, 0, 500, 240, 0, 0, 1], 640, 480)
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 40, 320, 240
    k = camera_info_intrinsics(msg)
    assert (k.cx, k.cy, k.width, k.height, k.fx) == (220, 200, 320, 240, 500)


def test_point_cloud_message_round_trips():
    cloud = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("instance_id", "<u4")])
    cloud["x"], cloud["z"], cloud["instance_id"] = [0.1, 0.2, 0.3], [1.0, 1.5, 2.0], [4, 4, 9]
    header = depth_msg(MM, "16UC1").header
    msg = point_cloud_msg(cloud, header)
    assert (msg.height, msg.width, msg.point_step, msg.row_step, msg.is_dense) == (1, 3, 16, 48, True)
    assert [(f.name, f.offset, f.datatype) for f in msg.fields] == [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("instance_id", 12, 6)]
    assert msg.header.frame_id == "depth_optical"
    np.testing.assert_array_equal(cloud_msg_to_array(msg), cloud)


# ----------------------------------------------------------------------------- the 3-D step
def scene():
    k = pinhole(64, 48, 60.0)
    frame = render([Plate((0.0, 0.0, 0.8), (0.3, 0.3), (200, 0, 0))], k, wall_depth=2.0)
    mask = frame.masks[0]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    info = info_msg([k.fx, 0, k.cx, 0, k.fy, k.cy, 0, 0, 1], 64, 48)
    return frame, mask, box, info


def run(depth: DepthInput, stamp_s: int, masks, boxes, tolerance=0.01, want_points=False):
    pairing = depth.pair(stamp_s * 1_000_000_000, tolerance)
    return depth.locate(pairing, (64, 48), masks, boxes, [3] * len(masks), DepthSettings(min_valid_pixels=5), MAX,
                        want_points)


def test_depth_input_pairs_locates_and_fills_the_message():
    frame, mask, box, info = scene()
    depth = DepthInput()
    depth.on_camera_info(info)
    depth.on_depth(depth_msg(to_16uc1(frame.depth), "16UC1", sec=5))
    result = run(depth, 5, [mask], [box], want_points=True)
    assert (result.status, result.outcome, result.problem) == (DEPTH_OK, "paired", "")
    np.testing.assert_allclose(result.locations[0].center, (0.0, 0.0, 0.8), atol=0.01)
    assert result.cloud.size == result.locations[0].inlier_pixels and set(result.cloud["instance_id"]) == {3}
    msg = InstanceSegmentation(instances=[Instance(id=3)])
    apply_depth(msg, result)
    assert msg.depth_status == msg.DEPTH_OK and msg.depth_header.frame_id == "depth_optical"
    location = msg.instances[0].location
    assert location.status == location.OK and location.center.z == pytest.approx(0.8, abs=0.002)
    assert location.box_size.x == pytest.approx(0.3, abs=0.03) and location.valid_pixels == location.mask_pixels > 0


def test_depth_input_names_each_cause_and_invents_nothing():
    frame, mask, box, info = scene()
    depth = DepthInput()
    assert run(depth, 5, [mask], [box]).outcome == "no_depth"
    depth.on_depth(depth_msg(to_16uc1(frame.depth), "16UC1", sec=5))
    assert run(depth, 5, [mask], [box]).outcome == "no_camera_info"
    depth.on_camera_info(info_msg([0] * 9, 64, 48))
    rejected = run(depth, 5, [mask], [box])
    assert (rejected.status, rejected.outcome, rejected.locations) == (DEPTH_REJECTED, "camera_info_malformed", None)
    assert "all zeros" in rejected.problem
    depth.on_camera_info(info)
    assert run(depth, 6, [mask], [box]).outcome == "depth_late"
    assert run(depth, 4, [mask], [box]).outcome == "depth_early"
    depth.on_depth(depth_msg(to_16uc1(frame.depth)[:, :40], "16UC1", sec=7))  # 40x48: another aspect
    mismatch = run(depth, 7, [mask], [box])
    assert mismatch.outcome == "resolution_mismatch" and "40x48" in mismatch.problem
    depth.on_depth(depth_msg(to_16uc1(frame.depth), "mono16", sec=8))
    assert run(depth, 8, [mask], [box]).outcome == "depth_encoding"
    msg = InstanceSegmentation(instances=[Instance(id=3)])
    apply_depth(msg, run(depth, 9, [mask], [box]))
    assert msg.depth_status == msg.DEPTH_MISSING and "older" in msg.depth_problem
    assert msg.instances[0].location.status == msg.instances[0].location.NO_DEPTH
    assert msg.instances[0].location.center.z == 0.0
    apply_depth(msg, None)
    assert msg.depth_status == msg.DEPTH_DISABLED


def test_half_resolution_depth_with_its_own_camera_info():
    frame, mask, box, _ = scene()
    small = pinhole(32, 24, 60.0)  # the same camera at half resolution
    half = render(frame.plates, small, wall_depth=2.0)
    depth = DepthInput()
    depth.on_camera_info(info_msg([small.fx, 0, small.cx, 0, small.fy, small.cy, 0, 0, 1], 32, 24))
    depth.on_depth(depth_msg(half.depth, "32FC1", sec=5))
    result = run(depth, 5, [mask], [box])
    assert result.status == DEPTH_OK and result.locations[0].mask_pixels == pytest.approx(mask.sum() / 4, rel=0.15)
    np.testing.assert_allclose(result.locations[0].center, (0.0, 0.0, 0.8), atol=0.01)


def test_no_depth_status_without_depth_is_the_message_default():
    location = InstanceLocation(status=0)
    assert location.center is None and Instance().location.status == 0 and InstanceSegmentation().depth_status == 0


def test_overlay_label_carries_the_distance_only_when_located():
    from instructsam_core.instances import Instance as CoreInstance
    from instructsam_ros.messages.mask_layout import label_image
    from instructsam_ros.messages.overlay import draw_overlay

    rgb = np.full((60, 200, 3), 255, np.uint8)
    mask = np.zeros((60, 200), bool)
    mask[30:50, 10:40] = True
    instances = [CoreInstance("cup", 0.9, mask, (10, 30, 40, 50))]
    labels = label_image(instances, [5], 60, 200, [(10, 30, 40, 50)])
    plain = draw_overlay(rgb, labels, instances, [5], [(10, 30, 40, 50)])
    unknown = draw_overlay(rgb, labels, instances, [5], [(10, 30, 40, 50)], distances=[None])
    located = draw_overlay(rgb, labels, instances, [5], [(10, 30, 40, 50)], distances=[0.82])
    np.testing.assert_array_equal(plain, unknown)
    # The label's filled background above the box grows to the right by the " 0.82 m" text.
    row = 20
    filled = lambda image: np.flatnonzero((image[row] != 255).any(axis=1))
    assert filled(located).max() > filled(plain).max() + 20


def test_diagnostics_count_3d_outcomes_per_cause_only_with_depth():
    from instructsam_ros.depth.step import OUTCOMES
    from instructsam_ros.segment_node.diagnostics import StreamStats, build_status

    stats = StreamStats()
    assert not any(kv.key.startswith("3d_") for kv in build_status("n", "h", 0, "m", stats, {}).values)
    stats.depth_enabled = True
    stats.record_depth("paired", 0.002)
    stats.record_depth("paired", 0.004)
    stats.record_depth("depth_late", 0.0001, "3-D missing: depth late")
    values = {kv.key: kv.value for kv in build_status("n", "h", 0, "m", stats, {}).values}
    assert {f"3d_{o}" for o in OUTCOMES} <= set(values)
    assert (values["3d_paired"], values["3d_depth_late"], values["3d_no_depth"]) == ("2", "1", "0")
    assert values["depth_step_median_ms"] == "2.00" and values["last_problem"] == "3-D missing: depth late"


def test_depth_queue_size_changes_keep_the_newest():
    from instructsam_ros.depth.pairing import DepthQueue

    queue = DepthQueue(size=4)
    for stamp in range(4):
        queue.add(stamp, stamp)
    queue.resize_to(2)
    assert len(queue) == 2 and queue.nearest(0) == (2, 2)
    queue.resize_to(5)
    for stamp in range(10, 13):
        queue.add(stamp, stamp)
    assert len(queue) == 5


def test_launch_depth_arguments_become_remappings():
    import ast
    from pathlib import Path

    from instructsam_ros.segment_node.cameras import depth_remappings

    assert depth_remappings([], "", "") == []
    assert depth_remappings([], "/cam/aligned_depth_to_color/image_raw", "") == [
        ("depth/image", "/cam/aligned_depth_to_color/image_raw"),
        ("depth/image/compressedDepth", "/cam/aligned_depth_to_color/image_raw/compressedDepth"),
        ("depth/camera_info", "/cam/aligned_depth_to_color/camera_info"),
    ]
    assert depth_remappings([], "/d", "/info")[2] == ("depth/camera_info", "/info")
    two = depth_remappings(["front", "wrist"], "", "", "/f/depth,/w/depth", "")
    assert ("front/depth/image", "/f/depth") in two and ("wrist/depth/camera_info", "/w/camera_info") in two
    for args, words in [(([], "", "/info"), "depth_info is set"), ((["a"], "/d", ""), "depths:="),
                        ((["a", "b"], "", "", "/d"), "give one per camera")]:
        with pytest.raises(ValueError, match=words):
            depth_remappings(*args)
    # The launch file declares the arguments and turns the depth parameter on with them.
    source = (Path(__file__).resolve().parents[2] / "launch" / "segment.launch.py").read_text()
    declared = {ast.literal_eval(n.args[0]) for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DeclareLaunchArgument"}
    assert {"depth", "depth_info", "depths", "depth_infos"} <= declared
    assert 'overrides.update({"depth": True})' in source and "remappings=remappings + depth" in source
