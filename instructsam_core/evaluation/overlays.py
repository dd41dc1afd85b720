"""Overlay pictures of the best and worst queries, to see what the numbers mean.

Each picture: a text strip (rank, IoU, instruction) above two panels of the image, ground
truth on the left (green), kept predictions on the right (one colour per instance, with score).
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from instructsam_core.evaluation.suites import EvalQuery
from instructsam_core.masks import rle_to_mask
from instructsam_core.metrics import QueryEval

PALETTE = [(230, 25, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]
GT_COLOR = (60, 200, 60)


def _tint(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float = 0.5) -> None:
    image[mask] = (1 - alpha) * image[mask] + alpha * np.array(color, dtype=np.float64)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render_overlay(
    image: np.ndarray, query: EvalQuery, evaluation: QueryEval, threshold: float, title: str
) -> Image.Image:
    """Compose the two-panel picture for one query (image: uint8 RGB [H, W, 3])."""
    base = image.astype(np.float64)
    left, right = base.copy(), base.copy()
    for rle in evaluation.gt:
        mask = rle_to_mask(rle)
        _tint(left, mask, GT_COLOR)
        left[_outline(mask)] = GT_COLOR
    kept = sorted(evaluation.kept(threshold), key=lambda p: -p[0])
    for k, (_, rle) in enumerate(kept):
        mask = rle_to_mask(rle)
        color = PALETTE[k % len(PALETTE)]
        _tint(right, mask, color)
        right[_outline(mask)] = color
    height, width = image.shape[:2]
    gap = 6
    font = ImageFont.load_default()
    lines = textwrap.wrap(title, width=max(30, (2 * width + gap) // 7))[:4]
    strip = 14 * len(lines) + 8
    canvas = Image.new("RGB", (2 * width + gap, height + strip), (255, 255, 255))
    canvas.paste(Image.fromarray(np.clip(left, 0, 255).astype(np.uint8)), (0, strip))
    canvas.paste(Image.fromarray(np.clip(right, 0, 255).astype(np.uint8)), (width + gap, strip))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, 4 + 14 * i), line, fill=(0, 0, 0), font=font)
    for k, (score, rle) in enumerate(kept[:10]):
        mask = rle_to_mask(rle)
        ys, xs = np.nonzero(mask)
        if ys.size:
            draw.text((width + gap + int(xs.min()), strip + int(ys.min())), f"{score:.2f}", fill=(0, 0, 0), font=font)
    return canvas


def write_overlays(
    out_dir: Path,
    images_dir: Path | None,
    queries: Sequence[EvalQuery],
    evaluations: Sequence[QueryEval],
    ious: Sequence[float],
    threshold: float,
    count: int = 3,
) -> list[Path]:
    """Write `count` best and `count` worst queries as PNGs under out_dir/overlays/."""
    if images_dir is None or count <= 0 or not queries:
        return []
    order = sorted(range(len(queries)), key=lambda i: (ious[i], queries[i].key))
    worst = order[:count]
    best = [i for i in reversed(order) if i not in worst][:count]
    target = out_dir / "overlays"
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.png"):
        old.unlink(missing_ok=True)
    written = []
    for label, picks in (("best", best), ("worst", worst)):
        for rank, i in enumerate(picks, start=1):
            query = queries[i]
            path = images_dir / query.image
            try:
                with Image.open(path) as handle:
                    image = np.asarray(handle.convert("RGB"))
            except OSError:
                continue  # a missing picture must not fail the scoring
            if image.shape[:2] != (query.height, query.width):
                continue
            title = f"{label} {rank}: IoU {ious[i]:.3f} | record {query.record} annotation {query.annotation} | {query.prompt}"
            picture = render_overlay(image, query, evaluations[i], threshold, title)
            name = target / f"{label}{rank}_r{query.record}_a{query.annotation}.png"
            picture.save(name)
            written.append(name)
    return written
