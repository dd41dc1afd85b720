"""The questions that turn an annotation into a user turn, in three styles.

- "release" (the release recipes): the authors' own template lists, read from
  `release_templates.json` (the release's strings as data, with their origin), drawn uniformly;
  a referring sentence is asked exactly as written; a listing of several phrases reads
  "a, b and c"; a merged two-phrase answer has its own question list.
- "varied": our paraphrases, one of them the Inst2Seg benchmark prompt.
- "benchmark": the Inst2Seg wording only (`text + " Please output the segmentation mask."`), for
  small models that should learn the task rather than the paraphrases.

Phrases are cleaned with the release's rule (`clean_phrase`): strip, first letter lowercased, one
trailing period dropped.
"""
from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

SEGMENTATION_SUFFIX = " Please output the segmentation mask."
RELEASE_TEMPLATES = Path(__file__).with_name("release_templates.json")

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

STYLES = ("release", "varied", "benchmark")


@lru_cache(maxsize=1)
def release_templates() -> dict[str, tuple[str, ...]]:
    """The release's question lists: {"phrase", "ocr", "two_phrases"} -> templates."""
    raw = json.loads(RELEASE_TEMPLATES.read_text(encoding="utf-8"))
    return {key: tuple(raw[key]) for key in ("phrase", "ocr", "two_phrases")}


def clean_phrase(text: str) -> str:
    """The release's phrase rule: strip, lowercase the first letter, drop one trailing period
    (inner whitespace is kept as written)."""
    phrase = text.strip()
    if phrase:
        phrase = phrase.lower()[0] + phrase[1:]
    if phrase.endswith("."):
        phrase = phrase[:-1]
    return phrase


def join_with_and(phrases: list[str]) -> str:
    """"a, b and c": the phrases joined by ", ", the last comma replaced by " and" (the release's
    listing; like it, the last comma of the joined text is the one replaced)."""
    text = ", ".join(phrases)
    if len(phrases) >= 2:
        cut = text.rfind(",")
        text = text[:cut] + " and" + text[cut + 1 :]
    return text


def phrase_instruction(phrase: str, rng: random.Random, style: str = "varied") -> str:
    """A user instruction asking for one phrase's instances."""
    if style == "release":
        return rng.choice(release_templates()["phrase"]).format(phrase=phrase)
    if style == "benchmark":
        return PHRASE_TEMPLATES[0].format(phrase=phrase)
    return rng.choice(PHRASE_TEMPLATES).format(phrase=phrase)


def ocr_instruction(text: str, rng: random.Random, style: str = "varied") -> str:
    """A user instruction asking for a piece of text in the image (the release's OCR questions)."""
    if style == "release":
        return rng.choice(release_templates()["ocr"]).format(phrase=text)
    return phrase_instruction(text, rng, style)


def sentence_instruction(sentence: str, rng: random.Random, style: str = "varied") -> str:
    """A referring/reasoning sentence: the release asks it exactly as written; our styles collapse
    its whitespace and (benchmark always, varied half the time) add the segmentation request."""
    if style == "release":
        return sentence
    sentence = " ".join(sentence.split())
    if style == "benchmark" or (rng.random() < 0.5 and "segment" not in sentence.lower()):
        return sentence + SEGMENTATION_SUFFIX
    return sentence


def multi_phrase_instruction(phrases: list[str], rng: random.Random, style: str = "varied") -> str:
    """One instruction listing several categories (the `instseg` single-turn form)."""
    if style == "release":
        return rng.choice(release_templates()["phrase"]).format(phrase=join_with_and(phrases))
    if style == "benchmark":
        return MULTI_PHRASE_TEMPLATES[-1].format(phrases=", ".join(phrases))
    return rng.choice(MULTI_PHRASE_TEMPLATES).format(phrases=", ".join(phrases))


def two_phrase_instruction(first: str, second: str, rng: random.Random, style: str = "varied") -> str:
    """The question of a merged two-phrase answer (the release's `use_multi_objs`)."""
    if style == "release":
        return rng.choice(release_templates()["two_phrases"]).format(phrase1=first, phrase2=second)
    return multi_phrase_instruction([first, second], rng, style)
