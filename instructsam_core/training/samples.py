"""What one training sample asks and answers: user turns, each answered by its phrases' blocks.

Two ways to make samples from a record (recipe `data.samples`):

- "conversation" (the release): every time a record is drawn, its annotations are shuffled and
  become ONE multi-turn conversation, one question per annotation answered with its phrase block;
  an `instseg` record is instead, half of the time, one question listing all its phrases
  ("a, b and c") answered with all their blocks. Annotations of more than 10 instances are
  skipped; at 10 phrases (or 100 instances) the rest of the record is left out. With
  `multi_objects` (the release's `use_multi_objs`) a record of 3 or more annotations that starts
  with a phrase picks its last mask annotation with instances as a partner: the first later turn
  whose instances overlap it by IoU < 0.05 answers both phrases ("a, b"), under a two-phrase
  question. With `merged_phrase: repeat` (the release) the partner is also asked on its own, and
  a partner that found no turn to join is not asked at all; `once` asks every annotation once.
  A point annotation (no mask) is asked with an empty answer (`point_annotations: question`, the
  release) or left out (`drop`).
- "turns" (the recipe of the embedded default model): built once when the data are read, in file
  order, split at 10 phrases; every turn is an example of its own, and an `instseg` record is one
  listing turn except for a seeded share (`instseg_single_fraction`) asked one phrase per turn.

A record's `conversations` turns (conversations.py) follow its annotation turns, or its listing,
as free-text messages (a conversation-form record has only them). With "turns" they are one more
example of their own.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from instructsam_core.training import templates
from instructsam_core.training.conversations import messages
from instructsam_core.training.records import MAX_INSTANCES_PER_PHRASE, MAX_PHRASES_PER_SAMPLE, Record, Target

MAX_OBJECTS_PER_SAMPLE = 100  # the release's limit on the instances of one sample
MERGE_IOU = 0.05  # a partner joins a turn whose instances overlap it less than this
SAMPLE_KINDS = ("conversation", "turns")
MERGED_PHRASE = ("repeat", "once")
POINT_ANNOTATIONS = ("question", "drop")


@dataclass
class Phrase:
    """A phrase of an answer and the annotation its instances come from."""

    text: str  # as written in the answer (and, bare, SAM3's prompt in training)
    target: Target


@dataclass
class Turn:
    question: str
    phrases: list[Phrase]  # answer order; empty for a point annotation's turn


@dataclass
class Sample:
    source: str
    turns: list[Turn]
    messages: list[tuple[str, str]] = field(default_factory=list)  # free-text (role, text) after the turns

    @property
    def phrases(self) -> list[Phrase]:
        return [p for turn in self.turns for p in turn.phrases]


@dataclass(frozen=True)
class SampleOptions:
    """How samples are made (recipe `data.*`; defaults are the release's)."""

    samples: str = "conversation"
    style: str = "release"
    multi_objects: bool = True
    merged_phrase: str = "repeat"
    point_annotations: str = "question"
    instseg_single_fraction: float = 0.0  # "turns" only


Decoder = Callable[[Target], np.ndarray]


def _question(target: Target, rng: random.Random, style: str) -> str:
    if target.kind == "sentence":
        return templates.sentence_instruction(target.text, rng, style)
    if target.kind == "OCR":
        return templates.ocr_instruction(target.phrase, rng, style)
    return templates.phrase_instruction(target.phrase, rng, style)


def _union(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    return masks.any(axis=0) if masks.shape[0] else np.zeros((height, width), dtype=bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    intersection = int(np.logical_and(a, b).sum())
    if intersection == 0:
        return 0.0
    return intersection / int(np.logical_or(a, b).sum())


def _partner(targets: list[Target], options: SampleOptions) -> int:
    """Index of the annotation that may be merged into another turn, or -1."""
    if not options.multi_objects or len(targets) <= 2 or targets[0].kind != "phrase":
        return -1
    for index in range(len(targets) - 1, -1, -1):
        if targets[index].ann_type == "mask" and targets[index].ann is not None:
            return index
    return -1


def conversation_sample(record: Record, rng: random.Random, options: SampleOptions, decode: Decoder) -> Sample:
    """One draw of a record as a multi-turn conversation (the release's form)."""
    targets = list(record.targets)
    rng.shuffle(targets)
    partner = _partner(targets, options)
    partner_mask = None
    if partner >= 0:
        partner_mask = _union(decode(targets[partner]), record.height, record.width)
    merged = False
    turns: list[Turn] = []
    phrases = objects = 0
    for index, target in enumerate(targets):
        if index == partner and (merged if options.merged_phrase == "once" else not merged):
            continue
        if target.ann_type == "point" and options.point_annotations == "drop":
            continue
        count = target.num_instances
        if count > MAX_INSTANCES_PER_PHRASE:
            continue
        if objects + count > MAX_OBJECTS_PER_SAMPLE or phrases + 1 > MAX_PHRASES_PER_SAMPLE:
            break
        question = _question(target, rng, options.style)
        if target.ann_type == "point":
            turns.append(Turn(question, []))
            continue
        turn = Turn(question, [Phrase(target.phrase, target)])
        turns.append(turn)
        phrases += 1
        if target.ann is None:
            continue
        objects += count
        if partner_mask is not None and not merged and index != partner and target.ann_type == "mask" \
                and _iou(_union(decode(target), record.height, record.width), partner_mask) < MERGE_IOU:
            # The partner joins this answer under its text as written (the release does not clean it).
            other = targets[partner]
            turn.phrases.append(Phrase(other.text, other))
            turn.question = templates.two_phrase_instruction(target.phrase, other.text, rng, options.style)
            phrases += 1
            objects += count  # the release counts this turn's instances again, not the partner's
            merged = True
    return Sample(record.source, turns)


def listing_sample(record: Record, rng: random.Random, options: SampleOptions) -> Sample | None:
    """One draw of an `instseg` record as one question listing its phrases; None when the release
    could not make it (an annotation that is not a phrase)."""
    targets = list(record.targets)
    rng.shuffle(targets)
    asked: list[str] = []
    answered: list[Phrase] = []
    objects = 0
    for target in targets:
        if target.ann_type == "point" and options.point_annotations == "drop":
            continue
        count = target.num_instances
        if count > MAX_INSTANCES_PER_PHRASE:
            continue
        if objects + count > MAX_OBJECTS_PER_SAMPLE or len(answered) + 1 > MAX_PHRASES_PER_SAMPLE:
            break
        if target.kind != "phrase":
            return None
        asked.append(target.phrase)
        if target.ann_type != "point":
            answered.append(Phrase(target.phrase, target))
            objects += count
    question = templates.multi_phrase_instruction(asked, rng, options.style)
    return Sample(record.source, [Turn(question, answered)])


def with_conversation(sample: Sample, record: Record) -> Sample:
    """The sample with the record's conversation turns appended as messages."""
    sample.messages = messages(record.conversation)
    return sample


def draw_sample(record: Record, rng: random.Random, options: SampleOptions, decode: Decoder) -> Sample:
    """A fresh sample of `record` (data.samples: conversation)."""
    if record.instseg and rng.random() > 0.5:
        listing = listing_sample(record, rng, options)
        if listing is not None:
            return with_conversation(listing, record)
    return with_conversation(conversation_sample(record, rng, options, decode), record)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def turn_samples(record: Record, seed: int, options: SampleOptions) -> list[Sample]:
    """The samples of `record` made once, when it is read (data.samples: turns): file order, split
    at 10 phrases, each turn its own sample. The wording is fixed per record (seeded by its source)."""
    targets = [t for t in record.targets if t.usable]
    rng = random.Random(f"{seed}:{record.source}")
    multi_phrase = record.instseg and rng.random() >= options.instseg_single_fraction
    samples = []
    for part, chunk in enumerate(_chunks(targets, MAX_PHRASES_PER_SAMPLE)):
        name = record.source if part == 0 else f"{record.source}#{part}"
        if multi_phrase:
            # One turn, several categories: one instruction lists them, the answer has them all.
            question = templates.multi_phrase_instruction([t.phrase for t in chunk], rng, options.style)
            samples.append(Sample(name, [Turn(question, [Phrase(t.phrase, t) for t in chunk])]))
            continue
        for target in chunk:
            samples.append(Sample(name, [Turn(_question(target, rng, options.style), [Phrase(target.phrase, target)])]))
    if record.conversation:
        samples.append(Sample(f"{record.source}#conversation" if targets else record.source, [],
                              messages(record.conversation)))
    return samples
