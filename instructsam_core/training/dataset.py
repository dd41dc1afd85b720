"""Training examples: an image, the turns a sample asks, and each phrase's target masks.

With `data.samples: conversation` an example is a record, made into a fresh sample every time it
is drawn (samples.py), from a random stream of the draw's key (seed, position in the run), so a
resumed run draws what the uninterrupted one would have. With `turns` the samples are made once.

Ground-truth masks are resized (nearest) to the model's square mask-logit grid here, in the
data workers, because that is the grid the matcher and the losses use (reference-design.md,
"Training"); it also keeps batches small. Which phrases and samples are supervised is decided
here too (`supervise`), by the recipe's target rules.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
from torch.utils.data import Dataset

from instructsam_core.errors import UserError
from instructsam_core.images import image_size, load_image
from instructsam_core.training.records import Record, Target
from instructsam_core.training.samples import Phrase, Sample, SampleOptions, draw_sample, turn_samples

NO_TARGET_PHRASE = ("placeholder", "unmatched")
TARGETLESS_SAMPLES = ("text_only", "all_terms")
BOX_SAMPLES = ("text_only", "mask")


@dataclass(frozen=True)
class TargetOptions:
    """Which phrases and samples train the mask and score terms (recipe `loss.*`; release defaults).

    no_target_phrase: "placeholder" - in a sample that trains masks, a phrase without a target
        gets one all-zero instance, which takes one query like any instance (the release);
        "unmatched" - it gets none, so all its queries are pushed towards score 0.
    targetless_samples: "text_only" - a sample trains masks only if one of its annotations is a
        mask annotation with instances (the release; then, if all its masks are empty on the
        mask grid, nothing is matched); otherwise the text cross-entropy alone.
        "all_terms" - every sample trains every term.
    box_samples: "text_only" - box annotations never make a sample train masks (the release);
        "mask" - they do, their boxes filled as masks.
    """

    no_target_phrase: str = "placeholder"
    targetless_samples: str = "text_only"
    box_samples: str = "text_only"


def resize_masks_nearest(masks: np.ndarray, size: int) -> np.ndarray:
    """bool [n, H, W] -> bool [n, size, size] (nearest; aspect not kept, like SAM3's input)."""
    out = np.zeros((masks.shape[0], size, size), dtype=bool)
    for i, mask in enumerate(masks):
        out[i] = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return out


def supervise(phrases: list[Phrase], grids: list[np.ndarray], options: TargetOptions) -> tuple[list[np.ndarray], bool]:
    """(each phrase's target masks, whether the sample trains the mask and score terms)."""
    if options.targetless_samples == "all_terms":
        trains = True
    else:
        trains = any(p.target.ann is not None and (p.target.ann_type == "mask" or options.box_samples == "mask")
                     for p in phrases)
    if options.no_target_phrase == "placeholder":
        grids = [np.zeros((1, *g.shape[1:]), dtype=bool) if p.target.ann is None else g
                 for p, g in zip(phrases, grids)]
    if trains and options.targetless_samples == "text_only" and not any(g.any() for g in grids):
        grids = [g[:0] for g in grids]  # nothing on the grid to match: every score goes towards 0
    return grids, trains


def check_record(record: Record) -> str | None:
    """Why `record` cannot be trained on (a message starting with its source), or None.

    Checked up front for every record, before the first step: the image file (its header only:
    it exists, is an image, has the record's size) and every mask, decoded at the record's size.
    Pixel data that is damaged behind an intact header is found when the sample is loaded. A
    text-only conversation record has nothing to check.
    """
    if record.image is None:
        return None
    try:
        height, width = image_size(record.image)
    except UserError as error:
        return f"{record.source}: {error}"
    if record.height is not None and (height, width) != (record.height, record.width):
        return (f"{record.source}: image {record.image} is {width}x{height} but the record says "
                f"{record.width}x{record.height}")
    try:
        record.decode()
        record.check_masks()
    except UserError as error:  # RecordError: the message starts with the source already
        return str(error)
    return None


class InstructSegDataset(Dataset):
    """Indexable examples; item = {image, turns, messages, masks, trains_masks, source}.

    `image` is None for a text-only conversation; `turns` is [(question, [phrase, ...]), ...];
    `messages` the free-text (role, text) messages after them; `masks` one bool [n, s, s] array
    per phrase in answer order. A key is an index, or (index, draw) where `draw` seeds the
    sample's random choices. With `skip_bad=True` an example whose image or masks cannot be read
    is replaced by the next readable one (deterministically) and counted in `self.skipped`;
    otherwise the error (which names the file and record index) propagates.
    """

    def __init__(self, records: list[Record], mask_size: int, options: SampleOptions | None = None,
                 targets: TargetOptions | None = None, seed: int = 0, skip_bad: bool = False,
                 cache_images: bool = False):
        self.records = records
        self.options = options or SampleOptions()
        self.targets = targets or TargetOptions()
        self.seed = int(seed)
        if self.options.samples == "turns":
            self.examples = [(r, s) for r, record in enumerate(records) for s in turn_samples(record, seed, self.options)]
        else:
            self.examples = [(r, None) for r in range(len(records))]
        if not self.examples:
            raise UserError("no training examples")
        self.mask_size = int(mask_size)
        self.skip_bad = skip_bad
        self.skipped: Counter = Counter()
        self._image_cache: dict[str, np.ndarray] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.examples)

    def modality_lengths(self) -> list[int]:
        """The release's batching key of every example (annotations carrying instances, -1 for none)."""
        return [self.records[r].modality_length for r, _ in self.examples]

    def _image(self, record: Record) -> np.ndarray | None:
        if record.image is None:
            return None
        key = str(record.image)
        if self._image_cache is not None and key in self._image_cache:
            return self._image_cache[key]
        try:
            image = load_image(record.image)
        except UserError as error:
            raise UserError(f"{record.source}: {error}") from None
        if record.height is not None and image.shape[:2] != (record.height, record.width):
            raise UserError(
                f"{record.source}: image {record.image} is {image.shape[1]}x{image.shape[0]} but the record "
                f"says {record.width}x{record.height}"
            )
        if self._image_cache is not None:
            self._image_cache[key] = image
        return image

    def sample(self, index: int, draw: int = 0) -> tuple[Record, Sample, dict[int, np.ndarray]]:
        """The example's record, its sample for this draw, and the masks decoded while making it."""
        record_index, fixed = self.examples[index]
        record = self.records[record_index]
        decoded: dict[int, np.ndarray] = {}

        def decode(target: Target) -> np.ndarray:
            if id(target) not in decoded:
                decoded[id(target)] = record.decode_target(target)
            return decoded[id(target)]

        if fixed is not None:
            return record, fixed, decoded
        rng = random.Random(self.seed * 1_000_003 + int(draw))
        return record, draw_sample(record, rng, self.options, decode), decoded

    def load(self, key) -> dict:
        index, draw = key if isinstance(key, tuple) else (key, 0)
        record, sample, decoded = self.sample(index, draw)
        grids = []
        for phrase in sample.phrases:
            masks = decoded[id(phrase.target)] if id(phrase.target) in decoded else record.decode_target(phrase.target)
            grids.append(resize_masks_nearest(masks, self.mask_size))
        grids, trains = supervise(sample.phrases, grids, self.targets)
        return {
            "image": self._image(record),
            "turns": [(turn.question, [p.text for p in turn.phrases]) for turn in sample.turns],
            "messages": list(sample.messages),
            "masks": grids,
            "trains_masks": trains,
            "source": sample.source,
        }

    def __getitem__(self, key) -> dict:
        if not self.skip_bad:
            return self.load(key)
        index, draw = key if isinstance(key, tuple) else (key, 0)
        for attempt in range(len(self)):
            try:
                return self.load(((index + attempt) % len(self), draw))
            except UserError as error:
                self.skipped[type(error).__name__] += 1
        raise UserError("no readable training example at all")
