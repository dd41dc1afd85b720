"""The release's pixels for both image branches, computed in torch on the model's device.

The release runs transformers' fast image processors (reference-design.md, "The released
checkpoint as written"): SAM3 = resize to the square input size with bilinear interpolation WITH
antialiasing, rescale 1/255, normalise mean = std = 0.5; Qwen3-VL = smart resize to 32-pixel units
within the processor's pixel budget, bicubic WITH antialiasing, the processor's mean/std, then
patches of 16 with temporal 2 and merge 2. Those processors resize uint8 images and round back to
uint8 before rescaling; so does this module. Antialiasing matters when reducing: OpenCV's and
PIL's defaults differ from it by up to 0.58 in normalised pixels on a 1200x2080 -> 1008x1008
reduction, while upscaling agrees within one uint8 step either way.

The kernels are the ones torchvision picks for those processors: bicubic runs in float32 and is
then clamped and rounded (torch's uint8 bicubic kernel clips its intermediate pass as PIL does, up
to 15 uint8 steps away on a noisy enlargement); bilinear runs on torch's native uint8 kernel on
the CPU (0.5 ms for a 1280x720 frame; within one step of the float path) and in float32 on a GPU,
which has no uint8 kernels. Nothing here needs torchvision, which does not install next to the CPU
torch build (platform.md).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize


def image_tensor(array: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """[H, W, 3] uint8 array -> [3, H, W] uint8 tensor on `device` (one host-to-device copy).

    A channels-last view of the array's own memory: nothing is transposed or copied on the CPU,
    unless the array is read-only (a frame decoded in place from a message or a bag), which torch
    does not wrap without a warning: that one is copied (0.3 ms at 720p).
    """
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device, non_blocking=True).permute(2, 0, 1)


def stack_channels_last(images: list[torch.Tensor]) -> torch.Tensor:
    """[N, 3, H, W] channels-last batch of same-sized [3, H, W] channels-last images (no copy for one)."""
    if len(images) == 1:
        return images[0].unsqueeze(0)
    return torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)


def resize_uint8(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize of uint8 images [N, 3, H, W] to `size`, rounded to uint8 values (as float32).

    `mode` is "bilinear" (SAM3) or "bicubic" (Qwen3-VL).
    """
    if images.device.type == "cpu" and mode == "bilinear":
        # torch's native uint8 kernel; channels-last is its layout, and the frames' own.
        out = F.interpolate(images.contiguous(memory_format=torch.channels_last), size=size, mode=mode,
                            align_corners=False, antialias=True)
        return out.float()
    # Converted through an NHWC view: a channels-last uint8 batch converts in 0.3 ms (720p) this way
    # and in 5 ms through its NCHW view, on the CPU.
    as_float = images.permute(0, 2, 3, 1).float().permute(0, 3, 1, 2)
    out = F.interpolate(as_float, size=size, mode=mode, align_corners=False, antialias=True)
    return out.clamp_(0.0, 255.0).round_()


def sam3_pixels(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """SAM3's input [N, 3, size, size] float32 in [-1, 1] for uint8 images [3, H, W] of any sizes.

    The aspect ratio is not kept (the release stretches every image to the square).
    """
    out = torch.empty(len(images), 3, size, size, device=images[0].device)
    for _, group in _by_shape(images):
        out[group] = resize_uint8(stack_channels_last([images[i] for i in group]), (size, size), "bilinear")
    return out.mul_(1.0 / 255.0).sub_(0.5).div_(0.5)


def qwen_pixels(
    images: list[torch.Tensor],
    patch_size: int,
    merge_size: int,
    temporal_patch_size: int,
    min_pixels: int,
    max_pixels: int,
    image_mean: list[float],
    image_std: list[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-VL patches of uint8 images [3, H, W]: (pixel_values [sum of patches, C*T*p*p], grid [N, 3]).

    Row layout as the Qwen2-VL processors write it: patches ordered by merge window (row-major),
    then within the window; each row holds channel, then the T identical temporal copies, then
    the p x p pixels.
    """
    factor = patch_size * merge_size
    device = images[0].device
    mean = torch.tensor(image_mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(image_std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    pieces: dict[int, torch.Tensor] = {}
    grids: dict[int, tuple[int, int, int]] = {}
    for (height, width), group in _by_shape(images):
        new_h, new_w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        stacked = stack_channels_last([images[i] for i in group])
        resized = resize_uint8(stacked, (new_h, new_w), "bicubic") if (new_h, new_w) != (height, width) \
            else stacked.permute(0, 2, 3, 1).float().permute(0, 3, 1, 2)
        normed = (resized * (1.0 / 255.0) - mean) / std
        grid_h, grid_w = new_h // patch_size, new_w // patch_size
        patches = normed.reshape(len(group), 3, grid_h // merge_size, merge_size, patch_size,
                                 grid_w // merge_size, merge_size, patch_size)
        patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7).unsqueeze(6)
        patches = patches.expand(-1, -1, -1, -1, -1, -1, temporal_patch_size, -1, -1)
        patches = patches.reshape(len(group), grid_h * grid_w, 3 * temporal_patch_size * patch_size * patch_size)
        for k, index in enumerate(group):
            pieces[index] = patches[k]
            grids[index] = (1, grid_h, grid_w)
    pixel_values = torch.cat([pieces[i] for i in range(len(images))], dim=0)
    grid = torch.tensor([grids[i] for i in range(len(images))], dtype=torch.long)
    return pixel_values, grid


def _by_shape(images: list[torch.Tensor]) -> list[tuple[tuple[int, int], list[int]]]:
    """Indices of same-sized images, so each size is resized in one batched call."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(index)
    return list(groups.items())


__all__ = ["image_tensor", "resize_uint8", "sam3_pixels", "qwen_pixels"]
