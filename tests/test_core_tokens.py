"""Phrase normalisation, the answer layout and the bare-phrase test that picks the fast path."""
import pytest

from instructsam_core import tokens as T


def test_normalize_phrase_follows_the_release():
    assert T.normalize_phrase("  Red circles.  ") == "red circles"
    assert T.normalize_phrase("The   Tall man") == "the Tall man"
    assert T.normalize_phrase("") == ""


def test_answer_layout_for_two_phrases():
    answer = T.answer_for_phrases(["Red circle", "blue square."], 3)
    block = "<|mask_start|>[SEG][SEG][SEG]<|mask_end|>"
    assert answer == (f"<|object_ref_start|>red circle<|object_ref_end|>{block}, "
                      f"<|object_ref_start|>blue square<|object_ref_end|>{block}")
    with pytest.raises(ValueError):
        T.answer_for_phrases([], 3)


@pytest.mark.parametrize("instruction, phrase", [
    ("red circles", "red circles"),
    ("The largest blue square.", "the largest blue square"),
    ("red circles Please output the segmentation mask.", "red circles"),
    ("the circle left of the triangle", "the circle left of the triangle"),
])
def test_bare_phrases_are_recognised(instruction, phrase):
    assert T.plain_phrase(instruction) == phrase


@pytest.mark.parametrize("instruction", [
    "What could be used as a wheel?",
    "Segment the red circles",
    "please find the cups",
    "red circles please",
    "Find it. Then the other one",
    "one two three four five six seven eight nine",
    "Please output the segmentation mask.",
])
def test_questions_commands_and_sentences_are_not_bare_phrases(instruction):
    assert T.plain_phrase(instruction) is None
