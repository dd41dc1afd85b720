"""Image loading: 16-bit data of every PNG colour type and Pillow mode, sizes, and messages."""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instructsam_core.errors import UserError
from instructsam_core.images import MAX_IMAGE_PIXELS, as_rgb_array, image_size, load_image

# PNG colour types: 0 grey, 2 RGB, 4 grey + alpha, 6 RGBA.
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def write_png16(path: Path, samples: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written byte by byte (the spec's layout, filter 0 on every row), so the test
    does not depend on the library that reads it."""
    height, width = samples.shape[:2]
    samples = samples.reshape(height, width, CHANNELS[color_type]).astype(">u2")
    raw = b"".join(b"\x00" + samples[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def gradient16(height: int = 8, width: int = 512) -> np.ndarray:
    """Every row runs from 0 to 65535 in equal steps (the whole 16-bit range)."""
    row = np.round(np.linspace(0, 65535, width)).astype(np.uint16)
    return np.tile(row, (height, 1))


@pytest.mark.parametrize("color_type", [0, 2, 4, 6])
def test_16_bit_png_of_every_colour_type_keeps_its_gradient(tmp_path, color_type):
    grey = gradient16()
    channels = CHANNELS[color_type]
    if color_type in (4, 6):  # grey/colour + an opaque alpha channel
        samples = np.stack([grey] * (channels - 1) + [np.full_like(grey, 65535)], axis=-1)
    else:
        samples = np.stack([grey] * channels, axis=-1)
    path = tmp_path / f"gradient-{color_type}.png"
    write_png16(path, samples, color_type)
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == (8, 512, 3)
    expected = (grey.astype(np.int64) * 255 / 65535)  # the same brightness on the 8-bit scale
    for c in range(3):
        assert np.abs(image[:, :, c] - expected).max() <= 1.0
    # the full range comes through: black to white, rising along the row
    assert image[0, 0, 0] == 0 and image[0, -1, 0] == 255
    assert np.all(np.diff(image[0, :, 0].astype(int)) >= 0)


def test_16_bit_grey_and_16_bit_rgb_of_one_picture_give_the_same_pixels(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, size=(16, 40), dtype=np.uint16)
    write_png16(tmp_path / "grey.png", grey, 0)
    write_png16(tmp_path / "rgb.png", np.stack([grey] * 3, axis=-1), 2)
    assert np.array_equal(load_image(tmp_path / "grey.png"), load_image(tmp_path / "rgb.png"))


@pytest.mark.parametrize("mode, suffix", [("I;16", ".tif"), ("I;16B", ".tif"), ("I", ".pgm")])
def test_wide_grey_modes_are_scaled_not_clipped(tmp_path, mode, suffix):
    grey = gradient16(4, 300)
    array = grey.astype(">u2") if mode == "I;16B" else grey
    path = tmp_path / f"g{suffix}"
    Image.fromarray(array).save(path)  # .pgm with values above 255 is written as 16-bit P5
    with Image.open(path) as opened:
        assert opened.mode == mode  # the mode this case is about
        from_pil = as_rgb_array(opened)
    image = load_image(path)
    assert np.array_equal(image, from_pil)
    expected = grey.astype(np.int64) * 255 / 65535
    assert np.abs(image[:, :, 1] - expected).max() <= 1.0
    # a mid-grey stays mid-grey (the bug: everything above 255 became white)
    assert 120 <= image[0, 150, 0] <= 135


def test_eight_bit_images_are_unchanged(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "grey.png")
    loaded = load_image(tmp_path / "rgb.png")
    assert np.array_equal(loaded, rgb)
    assert loaded.flags.writeable  # the caller's own array, not a read-only view of Pillow's buffer
    grey = load_image(tmp_path / "grey.png")
    assert all(np.array_equal(grey[:, :, c], rgb[:, :, 0]) for c in range(3))


def test_images_between_pillows_limit_and_ours_load_without_a_warning(tmp_path):
    side = 9500  # 90.25 M pixels: above Pillow's 89.5 M warning limit, below our 100 M
    assert Image.MAX_IMAGE_PIXELS < side * side <= MAX_IMAGE_PIXELS
    path = tmp_path / "big.png"
    Image.new("1", (side, side), 1).save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert image_size(path) == (side, side)
        image = load_image(path)
    assert image.shape == (side, side, 3) and image[0, 0, 0] == 255
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_images_over_our_limit_are_refused_from_the_header(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (10001, 10000)).save(path)
    with pytest.raises(UserError, match="too large"):
        load_image(path)


def test_a_directory_or_a_missing_file_is_named_as_such(tmp_path):
    with pytest.raises(UserError, match="is a directory, not an image file"):
        load_image(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_image(tmp_path / "missing.png")
