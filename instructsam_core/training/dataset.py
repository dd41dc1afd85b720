"""Training examples (one image + one instruction + its phrases and masks) and their batching.

A `Record` with several turns becomes several examples (the processor builds single-turn
prompts); an `instseg` record is one example whose answer lists all its phrases, so one image
encode supervises up to 10 phrases.

Ground-truth masks are resized (nearest) to the model's square mask-logit grid here, in the
data workers, because that is the grid the matcher and the losses use (reference-design.md,
"Training"); it also keeps batches small.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from instructsam_core.errors import UserError
from instructsam_core.images import image_size, load_image
from instructsam_core.training.records import Record


@dataclass(frozen=True)
class ExampleRef:
    record: int
    turn: int


def resize_masks_nearest(masks: np.ndarray, size: int) -> np.ndarray:
    """bool [n, H, W] -> bool [n, size, size] (nearest; aspect not kept, like SAM3's input)."""
    out = np.zeros((masks.shape[0], size, size), dtype=bool)
    for i, mask in enumerate(masks):
        out[i] = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return out


def check_record(record: Record) -> str | None:
    """Why `record` cannot be trained on (a message starting with its source), or None.

    Checked up front for every record, before the first step: the image file (its header only:
    it exists, is an image, has the record's size) and every mask, decoded at the record's size.
    Pixel data that is damaged behind an intact header is found when the sample is loaded.
    """
    try:
        height, width = image_size(record.image)
    except UserError as error:
        return f"{record.source}: {error}"
    if (height, width) != (record.height, record.width):
        return (f"{record.source}: image {record.image} is {width}x{height} but the record says "
                f"{record.width}x{record.height}")
    try:
        record.decode()
    except UserError as error:  # RecordError: the message starts with the source already
        return str(error)
    return None


class InstructSegDataset(Dataset):
    """Indexable examples; item = {image, instruction, phrases, masks, source}.

    With `skip_bad=True` an example whose image or masks cannot be read is replaced by the next
    readable one (deterministically) and counted in `self.skipped`; otherwise the error (which
    names the file and record index) propagates.
    """

    def __init__(self, records: list[Record], mask_size: int, skip_bad: bool = False, cache_images: bool = False):
        self.records = records
        self.refs = [ExampleRef(r, t) for r, record in enumerate(records) for t in range(len(record.turns))]
        if not self.refs:
            raise UserError("no training examples")
        self.mask_size = int(mask_size)
        self.skip_bad = skip_bad
        self.skipped: Counter = Counter()
        self._image_cache: dict[str, np.ndarray] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.refs)

    def _image(self, record: Record) -> np.ndarray:
        key = str(record.image)
        if self._image_cache is not None and key in self._image_cache:
            return self._image_cache[key]
        try:
            image = load_image(record.image)
        except UserError as error:
            raise UserError(f"{record.source}: {error}") from None
        if image.shape[:2] != (record.height, record.width):
            raise UserError(
                f"{record.source}: image {record.image} is {image.shape[1]}x{image.shape[0]} but the record "
                f"says {record.width}x{record.height}"
            )
        if self._image_cache is not None:
            self._image_cache[key] = image
        return image

    def load(self, index: int) -> dict:
        ref = self.refs[index]
        record = self.records[ref.record]
        turn = record.turns[ref.turn]
        masks = [resize_masks_nearest(m, self.mask_size) for m in record.decode(ref.turn)]
        return {
            "image": self._image(record),
            "instruction": turn.instruction,
            "phrases": [t.phrase for t in turn.targets],
            "masks": masks,
            "source": record.source,
        }

    def __getitem__(self, index: int) -> dict:
        if not self.skip_bad:
            return self.load(index)
        for attempt in range(len(self)):
            try:
                return self.load((index + attempt) % len(self))
            except UserError as error:
                self.skipped[type(error).__name__] += 1
        raise UserError("no readable training example at all")


class TrainingCollator:
    """Examples -> model inputs (via the processor), labels, and per-phrase target masks.

    `targets` is a list over all phrases of the batch in row-major order (the order of the
    model's query blocks): bool tensors [n_instances, s, s].
    """

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.processor(
            [e["image"] for e in examples],
            [e["instruction"] for e in examples],
            phrases=[e["phrases"] for e in examples],
        )
        batch.pop("image_sizes", None)
        batch["targets"] = [torch.from_numpy(m) for e in examples for m in e["masks"]]
        batch["sources"] = [e["source"] for e in examples]
        return batch
