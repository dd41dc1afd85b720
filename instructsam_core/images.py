"""Reading images into the one form the model side accepts: HxWx3 uint8 RGB arrays.

16-bit data: Pillow opens 16-bit RGB(A) and grey+alpha files as 8-bit modes holding each
sample's high byte, but 16-bit greyscale (PNG, TIFF: modes "I;16", "I;16B", ...; 16-bit PGM:
mode "I" with values 0..65535) stays 16-bit, and its own conversion to RGB clips every value
above 255, so such a picture came out almost white. Those modes are scaled here the same way
Pillow decodes 16-bit colour: the high byte (v >> 8), so a 16-bit picture gives the same 8-bit
pixels whether it was stored as grey or as RGB.

Size limit: our own `MAX_IMAGE_PIXELS` (checked from the header, before anything is decoded).
Pillow's smaller default limit would only print a two-line `DecompressionBombWarning` for
images between the two, so that warning is silenced where we open a file.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from instructsam_core.errors import UserError

MAX_IMAGE_PIXELS = 100_000_000  # refuse decompression bombs before they fill memory


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"image {path} is a directory, not an image file")
    if not path.exists():
        raise UserError(f"image {path} does not exist")
    if not path.is_file():
        raise UserError(f"image {path} is not a regular file")


@contextmanager
def _open(path: Path):
    """Image.open with our size limit instead of Pillow's warning (errors are UserErrors)."""
    _check_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise UserError(f"image {path} is too large (over {MAX_IMAGE_PIXELS} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"cannot read image {path}: {error}") from None
    with image:
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise UserError(f"image {path} is too large ({image.width}x{image.height}, "
                            f"more than {MAX_IMAGE_PIXELS} pixels)")
        yield image


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    with _open(Path(path)) as image:
        return image.height, image.width


def load_image(path: str | Path) -> np.ndarray:
    """Open an image file, apply its EXIF orientation and convert it to RGB (16-bit data scaled)."""
    path = Path(path)
    with _open(path) as image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                array = _to_rgb(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError) as error:
            raise UserError(f"cannot read image {path}: {error}") from None
    # np.asarray of a Pillow image is read-only; callers get an array of their own.
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")


def _is_wide_grey(mode: str) -> bool:
    """Pillow's greyscale modes that hold more than 8 bits: I;16, I;16L, I;16B, I;16N and I."""
    return mode == "I" or mode.startswith("I;16")


def _to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 from any Pillow mode; wide greyscale is taken as 16-bit data (v >> 8)."""
    if _is_wide_grey(image.mode):
        values = np.asarray(image)  # uint16 of either byte order, or int32 for mode I
        grey = (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """Accept a PIL image, an HxW grey array or an HxWx3/4 array; return HxWx3 uint8 RGB."""
    if isinstance(image, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(image))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 RGB image, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"empty image of shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    return array[:, :, :3]
