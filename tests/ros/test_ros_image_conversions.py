"""sensor_msgs images <-> arrays: every encoding against hand-computed pixels, every bad input."""
from __future__ import annotations

import array

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from instructsam_ros.messages.images import (
    BadImageError,
    array_to_image_msg,
    compressed_msg_to_rgb,
    image_msg_to_array,
    image_msg_to_rgb,
)

BIG = 1 << 24


def make_msg(encoding: str, height: int, width: int, step: int, data: bytes, bigendian: int = 0) -> Image:
    msg = Image()
    msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian = encoding, height, width, step, bigendian
    msg.data = array.array("B", data)
    return msg


RGB_2x3 = np.array(
    [[[10, 20, 30], [40, 50, 60], [70, 80, 90]], [[1, 2, 3], [4, 5, 6], [250, 251, 252]]], dtype=np.uint8
)


def test_rgb8_is_decoded_without_copy():
    msg = make_msg("rgb8", 2, 3, 9, RGB_2x3.tobytes())
    rgb = image_msg_to_rgb(msg, BIG)
    np.testing.assert_array_equal(rgb, RGB_2x3)
    assert np.shares_memory(rgb, np.frombuffer(msg.data, dtype=np.uint8))


def test_bgr8_channels_are_swapped():
    msg = make_msg("bgr8", 2, 3, 9, RGB_2x3[:, :, ::-1].tobytes())
    np.testing.assert_array_equal(image_msg_to_rgb(msg, BIG), RGB_2x3)


def test_rgba8_and_bgra8_drop_alpha():
    rgba = np.concatenate([RGB_2x3, np.full((2, 3, 1), 99, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_msg_to_rgb(make_msg("rgba8", 2, 3, 12, rgba.tobytes()), BIG), RGB_2x3)
    bgra = np.concatenate([RGB_2x3[:, :, ::-1], np.full((2, 3, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_msg_to_rgb(make_msg("bgra8", 2, 3, 12, bgra.tobytes()), BIG), RGB_2x3)


def test_mono8_becomes_grey_rgb():
    grey = np.array([[0, 7, 255]], dtype=np.uint8)
    rgb = image_msg_to_rgb(make_msg("mono8", 1, 3, 3, grey.tobytes()), BIG)
    np.testing.assert_array_equal(rgb, np.array([[[0, 0, 0], [7, 7, 7], [255, 255, 255]]], np.uint8))


def test_generic_8bit_types_are_read_as_cv_bridge_reads_them():
    """cv_bridge passes 8UC3/8UC1/8UC4 through as OpenCV images, which OpenCV takes as BGR, grey, BGRA."""
    bgr = np.ascontiguousarray(RGB_2x3[:, :, ::-1])
    np.testing.assert_array_equal(image_msg_to_rgb(make_msg("8UC3", 2, 3, 9, bgr.tobytes()), BIG), RGB_2x3)
    padded = np.zeros((2, 10), np.uint8)
    padded[:, :9] = bgr.reshape(2, 9)
    padded[:, 9] = 77
    np.testing.assert_array_equal(image_msg_to_rgb(make_msg("8UC3", 2, 3, 10, padded.tobytes()), BIG), RGB_2x3)
    grey = np.array([[0, 7, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(image_msg_to_rgb(make_msg("8UC1", 1, 3, 3, grey.tobytes()), BIG),
                                  np.array([[[0, 0, 0], [7, 7, 7], [255, 255, 255]]], np.uint8))
    bgra = np.concatenate([bgr, np.full((2, 3, 1), 5, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_msg_to_rgb(make_msg("8UC4", 2, 3, 12, bgra.tobytes()), BIG), RGB_2x3)
    # Other generic types carry no colour meaning cv_bridge or this node could use.
    for encoding, step in (("8UC2", 6), ("16UC3", 18), ("8SC3", 9), ("32FC3", 36)):
        with pytest.raises(BadImageError, match="unsupported encoding") as caught:
            image_msg_to_rgb(make_msg(encoding, 2, 3, step, bytes(step * 2)), BIG)
        assert caught.value.kind == "unsupported_encoding"
    with pytest.raises(BadImageError, match="shorter than a row") as caught:  # 3 bytes a pixel, as bgr8
        image_msg_to_rgb(make_msg("8UC3", 2, 3, 8, bytes(16)), BIG)
    assert caught.value.kind == "short_step"


@pytest.mark.parametrize("bigendian", [0, 1])
def test_mono16_is_scaled_to_8_bits_in_either_byte_order(bigendian):
    values = np.array([[0, 0x1234, 0xFFFF]], dtype=np.uint16)
    data = values.astype(">u2" if bigendian else "<u2").tobytes()
    rgb = image_msg_to_rgb(make_msg("mono16", 1, 3, 6, data, bigendian), BIG)
    # 0x1234 = 4660 -> 4660 * 255 / 65535 = 18.13
    assert rgb[0, :, 0].tolist() == [0, 18, 255]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_yuv422_grey_pairs_decode_to_their_luma():
    # UYVY: U Y0 V Y1 per pixel pair. Cameras send BT.601 video range (Y 16..235), so with
    # U = V = 128 (no colour) R = G = B = 1.164 (Y - 16), clipped: 50 -> 39.6, 200 -> 214.2.
    data = bytes([128, 50, 128, 200, 128, 0, 128, 255])
    rgb = image_msg_to_rgb(make_msg("yuv422", 1, 4, 8, data), BIG)
    assert rgb[0, :, 0].tolist() == [40, 214, 0, 255]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()


def test_yuv422_colour_follows_bt601():
    # Y 100, U 128, V 200: R = 1.164 * 84 + 1.596 * 72 = 212.7, G = 97.8 - 0.813 * 72 = 39.2,
    # B = 97.8 (U is neutral).
    rgb = image_msg_to_rgb(make_msg("yuv422", 1, 2, 4, bytes([128, 100, 200, 100])), BIG)
    r, g, b = (int(v) for v in rgb[0, 0])
    assert abs(r - 213) <= 2 and abs(g - 39) <= 2 and abs(b - 98) <= 2


def test_row_padding_is_skipped():
    padded = np.zeros((2, 11), np.uint8)
    padded[:, :9] = RGB_2x3.reshape(2, 9)
    padded[:, 9:] = 77  # padding bytes must not leak into pixels
    np.testing.assert_array_equal(image_msg_to_rgb(make_msg("rgb8", 2, 3, 11, padded.tobytes()), BIG), RGB_2x3)


@pytest.mark.parametrize(
    "msg, words",
    [
        (make_msg("32FC1", 1, 1, 4, bytes(4)), "unsupported encoding"),
        (make_msg("foo", 1, 1, 3, bytes(3)), "unsupported encoding"),
        (make_msg("rgb8", 2, 3, 9, bytes(17)), "expected step x height"),
        (make_msg("rgb8", 2, 3, 8, bytes(16)), "shorter than a row"),
        (make_msg("rgb8", 0, 3, 9, b""), "empty image"),
        (make_msg("mono8", 4, 0, 0, b""), "empty image"),
        (make_msg("yuv422", 1, 3, 6, bytes(6)), "even width"),
    ],
)
def test_malformed_images_are_refused_with_a_reason(msg, words):
    with pytest.raises(BadImageError, match=words):
        image_msg_to_rgb(msg, BIG)


def test_every_rejection_reason_has_a_kind_of_its_own():
    """The node rate-limits its warnings per kind: reasons that share a kind would hide each other."""
    cases = {
        "compressed_in_raw_image": make_msg("jpeg", 2, 3, 9, bytes(18)),
        "no_encoding": make_msg("", 2, 3, 9, bytes(18)),
        "unsupported_encoding": make_msg("32FC1", 1, 1, 4, bytes(4)),
        "data_size": make_msg("rgb8", 2, 3, 9, bytes(17)),
        "short_step": make_msg("rgb8", 2, 3, 8, bytes(16)),
        "empty_image": make_msg("rgb8", 0, 0, 0, b""),
        "odd_width": make_msg("yuv422", 1, 3, 6, bytes(6)),
        "too_many_pixels": make_msg("mono8", 10, 10, 10, bytes(100)),
    }
    kinds = {}
    for expected, msg in cases.items():
        with pytest.raises(BadImageError) as caught:
            image_msg_to_rgb(msg, 99)
        kinds[expected] = caught.value.kind
    assert kinds == {kind: kind for kind in cases}
    # A raw Image carrying JPEG bytes is told where compressed images go; no encoding is named.
    with pytest.raises(BadImageError, match="CompressedImage on image/compressed"):
        image_msg_to_rgb(make_msg("JPEG", 2, 3, 9, bytes(18)), BIG)
    with pytest.raises(BadImageError, match="no encoding"):
        image_msg_to_rgb(make_msg("  ", 2, 3, 9, bytes(18)), BIG)
    compressed_kinds = []
    for data in (b"", b"\xff\xd8 not a jpeg"):
        with pytest.raises(BadImageError) as caught:
            compressed_msg_to_rgb(_compressed(data, "jpeg"), BIG)
        compressed_kinds.append(caught.value.kind)
    assert compressed_kinds == ["compressed_empty", "undecodable"]


def test_images_over_the_pixel_limit_are_refused():
    msg = make_msg("mono8", 10, 10, 10, bytes(100))
    assert image_msg_to_rgb(msg, 100).shape == (10, 10, 3)
    with pytest.raises(BadImageError, match="max_input_pixels=99"):
        image_msg_to_rgb(msg, 99)


def _compressed(data: bytes, fmt: str) -> CompressedImage:
    msg = CompressedImage()
    msg.format = fmt
    msg.data = array.array("B", data)
    return msg


def test_png_is_decoded_losslessly_to_rgb():
    ok, png = cv2.imencode(".png", np.ascontiguousarray(RGB_2x3[:, :, ::-1]))
    assert ok
    np.testing.assert_array_equal(compressed_msg_to_rgb(_compressed(png.tobytes(), "png"), BIG), RGB_2x3)


def test_grey_jpeg_gets_three_channels():
    ok, jpg = cv2.imencode(".jpg", np.full((8, 16), 120, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    rgb = compressed_msg_to_rgb(_compressed(jpg.tobytes(), "jpeg"), BIG)
    assert rgb.shape == (8, 16, 3) and abs(int(rgb.mean()) - 120) <= 1


@pytest.mark.parametrize("data, words", [(b"", "no data"), (b"not an image at all", "could not be decoded")])
def test_bad_compressed_data_is_refused(data, words):
    with pytest.raises(BadImageError, match=words):
        compressed_msg_to_rgb(_compressed(data, "jpeg"), BIG)


def test_compressed_size_is_checked_before_decoding():
    ok, png = cv2.imencode(".png", np.zeros((100, 100, 3), np.uint8))
    assert ok
    with pytest.raises(BadImageError, match="max_input_pixels=5000"):
        compressed_msg_to_rgb(_compressed(png.tobytes(), "png"), 5000)


@pytest.mark.parametrize(
    "pixels, encoding",
    [
        (RGB_2x3, "rgb8"),
        (RGB_2x3, "bgr8"),
        (np.array([[0, 128, 255]], np.uint8), "mono8"),
        (np.array([[0, 0x0102, 65535], [7, 8, 9]], np.uint16), "mono16"),
    ],
)
def test_array_to_image_msg_round_trips(pixels, encoding):
    msg = array_to_image_msg(pixels, encoding)
    channels = 3 if pixels.ndim == 3 else 1
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (pixels.shape[0], pixels.shape[1], encoding, 0)
    assert msg.step == pixels.shape[1] * channels * pixels.itemsize
    np.testing.assert_array_equal(image_msg_to_array(msg), pixels)


def test_mono16_is_little_endian_on_the_wire():
    msg = array_to_image_msg(np.array([[0x0102]], np.uint16), "mono16")
    assert bytes(msg.data) == bytes([0x02, 0x01])


def test_array_to_image_msg_refuses_mismatched_arrays():
    with pytest.raises(ValueError):
        array_to_image_msg(np.zeros((2, 2), np.uint16), "mono8")
    with pytest.raises(ValueError):
        array_to_image_msg(np.zeros((2, 2, 4), np.uint8), "rgb8")
