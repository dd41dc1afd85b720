"""Special tokens, the answer layout, and phrase normalisation (reference-design.md, "Model").

The answer for each target phrase is
    <|object_ref_start|>PHRASE<|object_ref_end|><|mask_start|>[SEG] x N<|mask_end|>
with phrases joined by ", ". The N `[SEG]` positions carry the instance-query bank.
"""
from __future__ import annotations

REGION = "<REGION>"
SEG = "[SEG]"
MASK_START = "<|mask_start|>"
MASK_END = "<|mask_end|>"
REF_START = "<|object_ref_start|>"
REF_END = "<|object_ref_end|>"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# Tokens InstructSAM adds to Qwen's vocabulary, in the release's order (with Qwen3-VL's vocabulary:
# 151669-151672; Qwen has spare embedding rows, so no resize). `<REGION>` is never used by
# inference; the other three are the answer layout's.
ADDED_TOKENS = (REGION, SEG, MASK_START, MASK_END)
REQUIRED_ADDED_TOKENS = (SEG, MASK_START, MASK_END)
# Qwen's own special tokens that the model relies on.
QWEN_SPECIAL_TOKENS = (
    END_OF_TEXT,
    IM_START,
    IM_END,
    REF_START,
    REF_END,
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    VISION_START,
    VISION_END,
    "<|vision_pad|>",
    IMAGE_PAD,
    VIDEO_PAD,
)

PHRASE_SEPARATOR = ", "
# The request the release appends to benchmark queries; it carries no target information.
SEGMENTATION_REQUEST = "Please output the segmentation mask."
MAX_INSTRUCTION_CHARS = 2000


def check_instruction(instruction: str) -> str:
    """The instruction with its whitespace collapsed; empty or over-long is a UserError. (Here, not
    in predictor.py, so a command can reject it before importing torch.)"""
    from instructsam_core.errors import UserError

    if not isinstance(instruction, str) or not instruction.strip():
        raise UserError("the instruction is empty")
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise UserError(f"the instruction is {len(instruction)} characters long; the limit is {MAX_INSTRUCTION_CHARS}")
    return " ".join(instruction.split())


def normalize_phrase(text: str) -> str:
    """Trim, lowercase the first letter and drop a trailing period, as the release does."""
    phrase = " ".join(text.split())
    if phrase.endswith("."):
        phrase = phrase[:-1].rstrip()
    if phrase:
        phrase = phrase[0].lower() + phrase[1:]
    return phrase


def phrase_block(phrase: str, num_queries: int) -> str:
    """The answer text for one phrase: the bracketed phrase followed by its query block."""
    return f"{REF_START}{phrase}{REF_END}{MASK_START}{SEG * num_queries}{MASK_END}"


def answer_for_phrases(phrases: list[str], num_queries: int) -> str:
    """The assistant answer that asks for every phrase's instances (without the closing <|im_end|>)."""
    if not phrases:
        raise ValueError("an answer needs at least one phrase")
    return PHRASE_SEPARATOR.join(phrase_block(normalize_phrase(p), num_queries) for p in phrases)


# Words that mark an instruction as a question or a command rather than a bare noun phrase.
_NON_PHRASE_OPENERS = {
    "what", "which", "where", "who", "whom", "whose", "how", "why", "when", "can", "could", "would",
    "will", "please", "segment", "find", "show", "give", "is", "are", "do", "does", "output", "identify",
    "locate", "highlight", "mark", "detect", "select", "point", "if", "i", "we", "there", "tell",
}


def plain_phrase(instruction: str, max_words: int = 8) -> str | None:
    """Return the instruction as a target phrase if it is a bare category or referring phrase.

    For such instructions the model's answer is the phrase itself (reference-design.md), so the
    caller can skip decoding and run the single-forward path. Questions, commands and long
    sentences return None: those need the model to generate the phrases.
    """
    text = " ".join(instruction.split())
    if text.lower().endswith(SEGMENTATION_REQUEST.lower()):
        text = text[: -len(SEGMENTATION_REQUEST)].rstrip()
    if not text or any(ch in text for ch in "?!;:\n") or "." in text.rstrip(".")[:-1]:
        return None
    words = [word.lower() for word in text.rstrip(".").split(" ")]
    if len(words) > max_words or words[0] in _NON_PHRASE_OPENERS or "please" in words:
        return None
    return normalize_phrase(text)
