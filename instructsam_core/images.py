"""Reading images into the one form the model side accepts: HxWx3 uint8 RGB arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from instructsam_core.errors import UserError

MAX_IMAGE_PIXELS = 100_000_000  # refuse decompression bombs before they fill memory


def load_image(path: str | Path) -> np.ndarray:
    """Open an image file, apply its EXIF orientation and convert it to RGB."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise UserError(f"image {path} is too large ({image.width}x{image.height})")
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"cannot read image {path}: {error}") from None


def as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """Accept a PIL image, an HxW grey array or an HxWx3/4 array; return HxWx3 uint8 RGB."""
    if isinstance(image, Image.Image):
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
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
