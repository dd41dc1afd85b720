"""Instruction templates that turn an annotation into a user turn.

Why several: a model trained on one fixed wording learns the wording; a handful of paraphrases
(chosen deterministically per record, so a resumed run sees the same text) keeps it about the
content. The Inst2Seg benchmark prompt (`text + " Please output the segmentation mask."`) is
one of them, so evaluation wording is seen in training.
"""
from __future__ import annotations

import random

SEGMENTATION_SUFFIX = " Please output the segmentation mask."

PHRASE_TEMPLATES = (
    "{phrase}" + SEGMENTATION_SUFFIX,
    "Can you segment '{phrase}' in the image?",
    "Please segment {phrase} in this image.",
    "Segment every instance of {phrase}.",
    "Where is {phrase} in the image? Please output the segmentation mask.",
)

MULTI_PHRASE_TEMPLATES = (
    "Please segment all instances of the following categories: {phrases}.",
    "Can you segment {phrases} in the image?",
    "{phrases}" + SEGMENTATION_SUFFIX,
)


STYLES = ("varied", "benchmark")


def phrase_instruction(phrase: str, rng: random.Random, style: str = "varied") -> str:
    """A user instruction asking for one phrase's instances.

    style "benchmark" always uses the Inst2Seg wording (for small models that should learn the
    task, not the paraphrases); "varied" picks one of the templates.
    """
    if style == "benchmark":
        return PHRASE_TEMPLATES[0].format(phrase=phrase)
    return rng.choice(PHRASE_TEMPLATES).format(phrase=phrase)


def sentence_instruction(sentence: str, rng: random.Random, style: str = "varied") -> str:
    """A referring/reasoning sentence is used as written; the suffix says what output is wanted."""
    sentence = " ".join(sentence.split())
    if style == "benchmark" or (rng.random() < 0.5 and "segment" not in sentence.lower()):
        return sentence + SEGMENTATION_SUFFIX
    return sentence


def multi_phrase_instruction(phrases: list[str], rng: random.Random, style: str = "varied") -> str:
    """One instruction listing several categories (the `instseg` single-turn form)."""
    if style == "benchmark":
        return MULTI_PHRASE_TEMPLATES[-1].format(phrases=", ".join(phrases))
    return rng.choice(MULTI_PHRASE_TEMPLATES).format(phrases=", ".join(phrases))
