"""3-D instances from depth (instructsam_ros.depth.geometry, depth.pairing, demo.depth_scenes):
the geometry against hand-computed values, without ROS."""
from __future__ import annotations

import math

import numpy as np
import pytest

from instructsam_ros.depth.geometry import (
    OK,
    TOO_FEW_VALID,
    BadDepthError,
    DepthGrid,
    DepthSettings,
    Intrinsics,
    depth_intrinsics,
    intrinsics_from_k,
    locate_instances,
    mask_interior,
    pack_points,
    same_aspect,
    sorted_quantile,
)
from instructsam_ros.depth.pairing import (
    DEPTH_EARLY,
    DEPTH_LATE,
    DEPTH_UNMATCHED,
    NO_DEPTH,
    PAIRED,
    DepthQueue,
)
from instructsam_ros.demo.depth_scenes import Plate, pinhole, render, tabletop_scene, to_16uc1, with_holes

NAN = float("nan")


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def locate_one(depth, scale, k, mask, settings=None, colour_size=None, **kwargs):
    colour_size = colour_size or (mask.shape[1], mask.shape[0])
    return locate_instances(depth, scale, k, colour_size, [mask], [box_of(mask)], settings or DepthSettings(), **kwargs)[0]


# ----------------------------------------------------------------------------- intrinsics
def test_intrinsics_scale_with_pixel_centres_at_integer_coordinates():
    k = Intrinsics(500.0, 400.0, 319.5, 239.5, 640, 480)
    half = k.scaled_to(320, 240)
    # cx' = (cx + 0.5) * s - 0.5: the centre of a 640-wide image stays the centre at 320.
    assert (half.fx, half.fy, half.cx, half.cy, half.width, half.height) == (250.0, 200.0, 159.5, 119.5, 320, 240)
    assert k.scaled_to(640, 480) is k
    # A CameraInfo describing another size of the same aspect is scaled to the depth image...
    assert depth_intrinsics(k, 320, 240) == half
    # ...one of another aspect is refused by name.
    with pytest.raises(BadDepthError) as error:
        depth_intrinsics(k, 848, 480)
    assert error.value.kind == "resolution_mismatch" and "640x480" in str(error.value) and "848x480" in str(error.value)


@pytest.mark.parametrize("k, size, words", [
    ([0.0] * 9, (640, 480), "all zeros"),
    ([500, 0, 320, 0, 500, 240, 0, 0, 0], (640, 480), "not a camera matrix"),
    ([500, 0, 320, 0, NAN, 240, 0, 0, 1], (640, 480), "NaN"),
    ([-500, 0, 320, 0, 500, 240, 0, 0, 1], (640, 480), "fx=-500"),
    ([500, 0, 320, 0, 500, 240, 0, 0, 1], (0, 0), "no image size"),
    ([500, 0, 320, 0, 500, 240, 0, 0], (640, 480), "8 values"),
])
def test_malformed_camera_matrices_are_refused_with_their_reason(k, size, words):
    with pytest.raises(BadDepthError) as error:
        intrinsics_from_k(k, *size)
    assert error.value.kind == "camera_info_malformed" and words in str(error.value)


def test_a_valid_camera_matrix_is_read_with_its_skew():
    k = intrinsics_from_k([600, 2, 321, 0, 610, 239, 0, 0, 1], 640, 480)
    assert (k.fx, k.fy, k.cx, k.cy, k.skew, k.width, k.height) == (600, 610, 321, 239, 2, 640, 480)


def test_aspect_ratio_within_one_pixel_of_the_smaller_image():
    assert same_aspect(640, 480, 320, 240) and same_aspect(1280, 720, 426, 240)  # decimated by 3, rounded down
    assert not same_aspect(640, 480, 848, 480) and not same_aspect(640, 480, 640, 360)


def test_depth_grid_samples_the_colour_pixel_under_each_depth_pixel_centre():
    grid = DepthGrid(8, 4, 4, 2)  # depth at half resolution
    np.testing.assert_array_equal(grid.cols, [1, 3, 5, 7])
    np.testing.assert_array_equal(grid.rows, [1, 3])
    # Colour columns 2..5 hold the centres of depth columns 1 and 2 (colour 3 and 5).
    assert grid.window((2, 0, 6, 4)) == (1, 0, 3, 2)
    mask = np.zeros((4, 8), bool)
    mask[:, 5] = True
    np.testing.assert_array_equal(grid.mask_window(mask, (1, 0, 3, 2)), [[False, True], [False, True]])
    with pytest.raises(BadDepthError) as error:
        DepthGrid(640, 480, 848, 480)
    assert error.value.kind == "resolution_mismatch" and "aligned" in str(error.value)


# ----------------------------------------------------------------------------- statistics
def test_quantiles_use_linear_interpolation_like_numpy():
    ordered = np.array([1.0, 2.0, 3.0, 4.0])
    assert sorted_quantile(ordered, 50.0) == 2.5
    assert sorted_quantile(ordered, 1.0) == pytest.approx(1.03)  # position 0.03
    assert sorted_quantile(ordered, 99.0) == pytest.approx(3.97)
    assert sorted_quantile(np.array([7.0]), 99.0) == 7.0


def small_scene(encoding: str):
    """5x5 depth, fx = fy = 100, principal point at pixel (2, 2). The mask is the 3x3 block of
    rows/cols 1..3 at 2.0 m plus pixel (0, 0), which lies on the wall at 4.0 m; the block has a
    NaN (or 0) reading at (1, 1) and a 0 at (3, 3)."""
    k = Intrinsics(100.0, 100.0, 2.0, 2.0, 5, 5)
    metres = np.full((5, 5), 4.0, np.float32)
    metres[1:4, 1:4] = 2.0
    metres[1, 1] = NAN
    metres[3, 3] = 0.0
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    mask[0, 0] = True
    if encoding == "16UC1":
        return k, to_16uc1(metres), 0.001, mask
    return k, metres, 1.0, mask


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1"])
def test_centre_and_box_by_hand(encoding):
    k, depth, scale, mask = small_scene(encoding)
    location = locate_one(depth, scale, k, mask, DepthSettings(min_valid_pixels=1))
    # 10 mask pixels, 2 invalid (NaN/0 and 0). Valid depths: seven 2.0 and one 4.0: median 2.0,
    # MAD 0, band max(0, 0.05) -> the wall pixel is an outlier. Inliers at (row, col) (1,2) (1,3)
    # (2,1) (2,2) (2,3) (3,1) (3,2): x = (col - 2) * 2.0 / 100 = -0.02, -0.02, 0, 0, 0, 0.02, 0.02
    # sorted (y likewise): median 0, 1st percentile -0.02, 99th 0.02.
    assert location.status == OK
    assert (location.mask_pixels, location.valid_pixels, location.inlier_pixels) == (10, 8, 7)
    np.testing.assert_allclose(location.center, (0.0, 0.0, 2.0), atol=1e-6)
    np.testing.assert_allclose(location.box_center, (0.0, 0.0, 2.0), atol=1e-6)
    np.testing.assert_allclose(location.box_size, (0.04, 0.04, 0.0), atol=1e-6)
    assert location.distance == pytest.approx(2.0)


def test_outlier_band_is_three_scaled_mads_but_never_below_the_minimum():
    # One row of pixels; depths 1.00 1.02 1.04 1.06 1.08 1.17 and a background 3.0 m.
    depths = np.array([[1.00, 1.02, 1.04, 1.06, 1.08, 1.17, 3.0]], np.float32)
    k = Intrinsics(100.0, 100.0, 3.0, 0.0, 7, 1)
    mask = np.ones((1, 7), bool)
    # median 1.06, |z - m| = .06 .04 .02 0 .02 .11 1.94 -> MAD 0.04, band 3 x 1.4826 x 0.04 = 0.178:
    # 1.17 stays (0.11 from the median), 3.0 goes.
    location = locate_one(depths, 1.0, k, mask, DepthSettings(min_valid_pixels=1, inlier_band=0.05))
    assert location.inlier_pixels == 6
    # Six inliers: z median (1.04 + 1.06) / 2; box 1.00 + 0.05 x 0.17 .. 1.17 - 0.05 x 0.09 (1st/99th).
    assert location.center[2] == pytest.approx(1.05, abs=1e-6)
    assert location.box_size[2] == pytest.approx((1.17 - 0.05 * 0.09) - (1.00 + 0.05 * 0.02), abs=1e-5)
    # A minimum band wider than 3 MADs keeps the background too.
    wide = locate_one(depths, 1.0, k, mask, DepthSettings(min_valid_pixels=1, inlier_band=2.0))
    assert wide.inlier_pixels == 7


def test_invalid_readings_are_never_used():
    k = Intrinsics(100.0, 100.0, 1.5, 0.5, 4, 2)
    mask = np.ones((2, 4), bool)
    depth = np.array([[1.0, NAN, np.inf, -1.0], [0.0, 12.0, 1.0, 1.0]], np.float32)  # max_depth 10
    any_share = DepthSettings(min_valid_pixels=1, max_depth=10.0, min_valid_fraction=0.0)  # 3 of 8 valid
    location = locate_one(depth, 1.0, k, mask, any_share)
    assert (location.mask_pixels, location.valid_pixels) == (8, 3)
    assert location.center[2] == pytest.approx(1.0)
    millimetres = np.array([[1000, 0, 65535, 1000], [1000, 0, 0, 0]], np.uint16)
    location = locate_one(millimetres, 0.001, k, mask, any_share)
    assert (location.mask_pixels, location.valid_pixels, location.center[2]) == (8, 3, pytest.approx(1.0))


def test_too_few_valid_pixels_report_counts_and_no_position():
    k = Intrinsics(100.0, 100.0, 2.0, 2.0, 5, 5)
    depth = np.zeros((5, 5), np.uint16)
    depth[2, 1:4] = 1500
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    location = locate_one(depth, 0.001, k, mask, DepthSettings(min_valid_pixels=4, min_valid_fraction=0.0))
    assert location.status == TOO_FEW_VALID and (location.mask_pixels, location.valid_pixels) == (9, 3)
    assert location.center is None and location.box_size is None and location.distance is None
    assert locate_one(depth, 0.001, k, mask, DepthSettings(min_valid_pixels=3, min_valid_fraction=0.0)).status == OK
    # 3 of 9 is a third of this mask (too thin to erode: its interior is all of it).
    assert locate_one(depth, 0.001, k, mask, DepthSettings(min_valid_pixels=3, min_valid_fraction=0.34)).status == TOO_FEW_VALID
    assert locate_one(depth, 0.001, k, mask, DepthSettings(min_valid_pixels=3, min_valid_fraction=0.33)).status == OK


# ----------------------------------------------------------------------------- whose readings
def test_the_interior_is_the_mask_eroded_by_two_pixels_or_less_when_thin():
    square = np.zeros((20, 20), bool)
    square[2:18, 2:18] = True  # 16 x 16: two 3x3 erosions leave 12 x 12 (56 %)
    expected = np.zeros_like(square)
    expected[4:16, 4:16] = True
    np.testing.assert_array_equal(mask_interior(square), expected)
    bar = np.zeros((7, 30), bool)
    bar[1:6, 0:30] = True  # 5 rows: two steps leave 1 row (under 25 %), one step 3 rows (of 28 columns)
    expected = np.zeros_like(bar)
    expected[2:5, 1:29] = True
    np.testing.assert_array_equal(mask_interior(bar), expected)
    line = np.zeros((3, 30), bool)
    line[1, :] = True  # one pixel thin: nothing to erode
    np.testing.assert_array_equal(mask_interior(line), line)


UNSEEN_K = pinhole(640, 480, 40.0)
# The case: a 13 cm square at 0.65 m (IR-black: no readings of its own) before a wall at 2.5 m.
UNSEEN = render([Plate(center=(0.0, 0.0, 0.65), size=(0.13, 0.13), color=(20, 20, 20))], UNSEEN_K, wall_depth=2.5)


def _spilled(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask grown by `pixels` on the right and below, as the model's masks sit (IoU ~0.8)."""
    grown = mask.copy()
    for step in range(1, pixels + 1):
        grown[step:, :] |= mask[:-step, :]
        grown[:, step:] |= mask[:, :-step]
    return grown


@pytest.mark.parametrize("spill", [1, 3, 6])
def test_an_object_without_readings_never_takes_the_walls_depth(spill):
    mask = _spilled(UNSEEN.masks[0], spill)
    blind = UNSEEN.depth.copy()
    blind[UNSEEN.masks[0]] = 0.0  # every reading on the object is missing; the wall's are there
    location = locate_one(blind, 1.0, UNSEEN_K, mask)
    spill_pixels = int((mask & ~UNSEEN.masks[0]).sum())
    assert location.status == TOO_FEW_VALID and location.center is None
    assert (location.mask_pixels, location.valid_pixels) == (int(mask.sum()), spill_pixels)
    assert location.valid_pixels >= 20  # more than the absolute minimum: the share decides
    # With its readings the same mask locates the square at its centre (the spill is wall).
    seen = locate_one(UNSEEN.depth, 1.0, UNSEEN_K, mask)
    assert seen.status == OK and seen.inlier_pixels == int(UNSEEN.masks[0].sum())
    np.testing.assert_allclose(seen.center, (0.0, 0.0, 0.65), atol=0.002)


def test_readings_only_on_the_rim_do_not_locate_the_object():
    """A glossy plate with readings only along its edge, its mask 2 px wider on each side: the
    rim is 55 % of the mask and valid, so a share of the whole mask would pass."""
    k = Intrinsics(100.0, 100.0, 20.0, 4.0, 40, 10)
    mask = np.zeros((10, 40), bool)
    mask[1:9, 0:40] = True
    depth = np.full((10, 40), 2.5, np.float32)  # the wall
    depth[3:7, 2:38] = 0.0  # the plate's own pixels: no readings
    location = locate_one(depth, 1.0, k, mask, DepthSettings(min_valid_pixels=1))
    assert location.status == TOO_FEW_VALID and (location.mask_pixels, location.valid_pixels) == (320, 176)


def test_a_thin_object_is_located_from_its_core_not_the_spill_around_it():
    """A 4 px pole whose mask is 2 px wider on each side: half the mask is wall."""
    k = Intrinsics(100.0, 100.0, 4.0, 20.0, 8, 40)
    mask = np.ones((40, 8), bool)
    depth = np.full((40, 8), 2.5, np.float32)
    depth[:, 2:6] = 0.8
    location = locate_one(depth, 1.0, k, mask, DepthSettings(min_valid_pixels=1))
    assert location.status == OK and location.inlier_pixels == 160
    assert location.center[2] == pytest.approx(0.8)
    depth[:, 2:6] = 0.0  # the pole unseen: its core has no readings
    location = locate_one(depth, 1.0, k, mask, DepthSettings(min_valid_pixels=1))
    assert location.status == TOO_FEW_VALID and location.valid_pixels == 160


def test_skew_enters_x():
    # x = (u - cx - s (v - cy) / fy) z / fx with s = 10: pixel (u=3, v=4), cx = cy = 0, z = 2.
    k = Intrinsics(100.0, 50.0, 0.0, 0.0, 5, 5, skew=10.0)
    depth = np.zeros((5, 5), np.float32)
    depth[4, 3] = 2.0
    mask = depth > 0
    location = locate_one(depth, 1.0, k, mask, DepthSettings(min_valid_pixels=1))
    np.testing.assert_allclose(location.center, ((3 - 10 * 4 / 50) * 2 / 100, 4 * 2 / 50, 2.0), rtol=1e-6)


def test_half_resolution_depth_uses_the_scaled_grid_and_real_readings_only():
    # Colour 8x8 with a mask of colour rows 2..5, cols 2..5; depth 4x4 (each depth pixel covers
    # 2x2 colour pixels, its centre on colour pixel (2r+1, 2c+1)): depth pixels 1..2 in both axes.
    colour_mask = np.zeros((8, 8), bool)
    colour_mask[2:6, 2:6] = True
    depth_k = Intrinsics(50.0, 50.0, 1.5, 1.5, 4, 4)
    depth = np.full((4, 4), 3.0, np.float32)
    depth[1:3, 1:3] = [[1.0, 1.0], [1.0, 1.0]]
    location = locate_one(depth, 1.0, depth_k, colour_mask, DepthSettings(min_valid_pixels=1), colour_size=(8, 8))
    assert (location.mask_pixels, location.valid_pixels, location.inlier_pixels) == (4, 4, 4)
    # x at depth columns 1, 2: (1 - 1.5) / 50 = -0.01 and +0.01 -> centre 0, box 0.02 wide (at
    # percentiles 1/99 of [-.01, -.01, .01, .01]: -0.01 + 0.03 x 0 .. 0.01).
    np.testing.assert_allclose(location.center, (0.0, 0.0, 1.0), atol=1e-6)
    np.testing.assert_allclose(location.box_size, (0.02, 0.02, 0.0), atol=1e-6)


def test_point_cloud_holds_every_inlier_point_with_its_instance_id():
    k, depth, scale, mask = small_scene("32FC1")
    other = np.zeros((5, 5), bool)
    other[4, 4] = True  # on the wall: one point at 4.0 m
    locations = locate_instances(depth, scale, k, (5, 5), [mask, other], [box_of(mask), box_of(other)],
                                 DepthSettings(min_valid_pixels=1), keep_points=True)
    cloud = pack_points(locations, [7, 9])
    assert cloud.dtype.itemsize == 16 and cloud.size == 8
    np.testing.assert_array_equal(cloud["instance_id"], [7] * 7 + [9])
    np.testing.assert_allclose(cloud["z"], [2.0] * 7 + [4.0])
    np.testing.assert_allclose(sorted(cloud["x"][:7]), [-0.02, -0.02, 0, 0, 0, 0.02, 0.02], atol=1e-6)
    np.testing.assert_allclose((cloud["x"][7], cloud["y"][7]), ((4 - 2) * 4.0 / 100, (4 - 2) * 4.0 / 100))
    assert pack_points(locate_instances(depth, scale, k, (5, 5), [mask], [box_of(mask)], DepthSettings()), [1]).size == 0


# ----------------------------------------------------------------------------- known scenes
def test_rendered_plates_are_located_where_they_are():
    """Exact masks of the tests' scene (one plate turned by 35 degrees), with 5 % holes:
    centres within 5 mm and sizes within 5 mm of the closed-form truth."""
    k = pinhole(640, 480, 40.0)
    frame = render(tabletop_scene(), k, wall_depth=1.5)
    depth = with_holes(frame.depth, 0.05, seed=1, invalid=NAN)
    boxes = [box_of(mask) for mask in frame.masks]
    locations = locate_instances(depth, 1.0, k, (640, 480), frame.masks, boxes, DepthSettings())
    for plate, location in zip(frame.plates, locations):
        center, size = plate.box()
        assert location.status == OK
        np.testing.assert_allclose(location.center, center, atol=0.005)
        np.testing.assert_allclose(location.box_size, size, atol=0.005)
        assert 0.93 * location.mask_pixels < location.valid_pixels < 0.97 * location.mask_pixels


def test_a_mask_spilling_onto_the_wall_keeps_its_object_geometry():
    k = pinhole(640, 480, 40.0)
    plate = Plate(center=(0.0, 0.0, 0.6), size=(0.1, 0.1), color=(200, 30, 30))
    frame = render([plate], k, wall_depth=1.5)
    grown = np.zeros_like(frame.masks[0])
    x0, y0, x1, y1 = box_of(frame.masks[0])
    grown[y0 - 12:y1 + 12, x0 - 12:x1 + 12] = True  # 12 px of wall around the plate (~40 % of the mask)
    location = locate_one(frame.depth, 1.0, k, grown)
    assert location.inlier_pixels == int(frame.masks[0].sum())
    np.testing.assert_allclose(location.center, (0.0, 0.0, 0.6), atol=0.002)
    np.testing.assert_allclose(location.box_size, (0.1, 0.1, 0.0), atol=0.004)


def test_sixteen_bit_depth_of_a_scene_agrees_with_metres():
    k = pinhole(320, 240, 60.0)
    frame = render(tabletop_scene(), k)
    boxes = [box_of(mask) for mask in frame.masks]
    metres = locate_instances(frame.depth, 1.0, k, (320, 240), frame.masks, boxes, DepthSettings())
    millimetres = locate_instances(to_16uc1(frame.depth), 0.001, k, (320, 240), frame.masks, boxes, DepthSettings())
    for a, b in zip(metres, millimetres):
        np.testing.assert_allclose(a.center, b.center, atol=0.001)


# ----------------------------------------------------------------------------- pairing
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


MS = 1_000_000


def test_pairing_picks_the_nearest_stamp_within_the_tolerance():
    queue = DepthQueue(size=4, clock=FakeClock())
    for stamp in (1000, 1033, 1066):
        queue.add(stamp * MS, f"depth {stamp}")
    pairing = queue.match(1040 * MS, tolerance_s=0.010)
    assert pairing.outcome == PAIRED and pairing.item == "depth 1033" and pairing.offset_s == pytest.approx(-0.007)


def test_pairing_names_why_there_is_no_partner():
    clock = FakeClock()
    queue = DepthQueue(size=3, silence_s=1.0, clock=clock)
    assert queue.match(1000 * MS, 0.01).outcome == NO_DEPTH
    for stamp in (1000, 1100, 1200):
        queue.add(stamp * MS, stamp)
    late = queue.match(1500 * MS, 0.02)
    assert late.outcome == DEPTH_LATE and "300 ms older" in late.problem and late.item is None
    early = queue.match(900 * MS, 0.02)
    assert early.outcome == DEPTH_EARLY and "100 ms newer" in early.problem
    unmatched = queue.match(1050 * MS, 0.02)
    assert unmatched.outcome == DEPTH_UNMATCHED and "the nearest is 50 ms older" in unmatched.problem
    queue.add(1300 * MS, 1300)  # the queue keeps the newest 3: 1000 is gone
    assert queue.match(1000 * MS, 0.02).outcome == DEPTH_EARLY
    clock.now += 1.5  # the depth topic falls silent
    silent = queue.match(1300 * MS, 0.02)
    assert silent.outcome == NO_DEPTH and "1.5 s" in silent.problem


def test_a_held_partner_pushed_out_of_the_queue_still_pairs():
    clock = FakeClock()
    queue = DepthQueue(size=2, clock=clock)
    queue.add(1000 * MS, "partner")
    held = queue.nearest(1002 * MS)
    assert held == (1000 * MS, "partner")
    for stamp in (1033, 1066):  # the model runs; newer depth images push the partner out
        queue.add(stamp * MS, stamp)
    assert queue.match(1002 * MS, 0.01).outcome == DEPTH_EARLY
    pairing = queue.match(1002 * MS, 0.01, held=held)
    assert pairing.paired and pairing.item == "partner" and pairing.offset_s == pytest.approx(-0.002)
    # A nearer depth image that arrived meanwhile wins over the held one.
    queue.add(1003 * MS, "nearer")
    assert queue.match(1002 * MS, 0.01, held=held).item == "nearer"
    assert DepthQueue(clock=clock).nearest(5) is None


def test_tilted_plate_box_is_its_closed_form():
    plate = Plate(center=(0.0, 0.0, 1.0), size=(0.2, 0.1), color=(1, 2, 3), yaw=math.radians(30.0))
    center, size = plate.box()
    assert center == (0.0, 0.0, 1.0)
    np.testing.assert_allclose(size, (0.2 * math.cos(math.radians(30)), 0.1, 0.2 * math.sin(math.radians(30))))
