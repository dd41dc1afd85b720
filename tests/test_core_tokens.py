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


def _between(ids, start, end):
    """The ids strictly between the first `start` and the next `end`."""
    i = ids.index(start)
    return ids[i + 1 : ids.index(end, i)]


def test_tiny_tokenizer_gives_a_phrase_the_same_ids_in_prompt_and_answer(tiny_model_dir):
    # A small model learns to answer with the phrases of a multi-phrase instruction by copying
    # their tokens; with byte-level BPE without a prefix space, "blue" after ", " in the prompt and
    # "blue" right after <|object_ref_start|> were different tokens, and it rarely learned to.
    from instructsam_core.processing import InstructSamProcessor

    processor = InstructSamProcessor.from_pretrained(tiny_model_dir)
    tok = processor.tokenizer
    phrases = ["red circles", "blue rings", "the second square from the left"]
    prompt = processor.prompt_ids(", ".join(phrases) + " Please output the segmentation mask.", 4)
    answer = processor.answer_ids(T.answer_for_phrases(phrases, processor.num_queries))
    comma = tok.convert_tokens_to_ids(",")
    vision_end = tok.convert_tokens_to_ids(T.VISION_END)
    # The prompt's phrases: after <|vision_end|>, split at the commas.
    text_ids = prompt[prompt.index(vision_end) + 1 :]
    prompt_phrases, current = [], []
    for token in text_ids:
        if token == comma:
            prompt_phrases.append(current)
            current = []
        else:
            current.append(token)
    prompt_phrases.append(current)
    ref_start, ref_end = processor.token_ids[T.REF_START], processor.token_ids[T.REF_END]
    rest = answer
    for k, phrase in enumerate(phrases):
        ids = _between(rest, ref_start, ref_end)
        rest = rest[rest.index(ref_end) + 1 :]
        assert prompt_phrases[k][: len(ids)] == ids, phrase
        # ... and the text comes back as written, without the encoder's leading space.
        assert processor.decode(ids) == phrase
    assert processor.decode(answer, skip_special_tokens=True).startswith("red circles")
