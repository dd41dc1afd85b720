"""The conversation form of a training record: free-text `conversations` turns, read as the release
reads them (`_convert_conversation` in its instructsam/training/dataset.py).

A record may carry `conversations`: a list (or a JSON string of a list) of `{from, value}` turns,
LLaVA style. The release takes their roles by POSITION (even: user, odd: assistant; `from` is not
read), appends them as messages after the turns made from the record's `annotation` (or alone,
when `annotation` is absent or null), and never asks SAM3 anything about them: the text of a
conversation trains the text cross-entropy alone. Such a record may also carry a record-level
`mask` list; the release decodes it when the record has an image (an undecodable one makes it draw
another sample) and counts it for the batching key, but with no phrase to prompt SAM3 nothing is
trained on it.

In a draw, `<image>` and `<video>` placeholders are removed from a value and it is stripped.
(The release's `instseg` listing draw, `_convert_conversation_instseg`, takes them otherwise, by
accident - its first value lands in the listing's own user message, which is then sent twice, the
image with it at half the token budget, and every value is appended to the phrase-prompt string -
and, once any file of a mixture has the field, fails on every record without it; we append the
same cleaned turns after the listing: training/README.md, "Not reproduced".)

Turns are checked when read: each an object with a string `value`; a `from`, when given, must
name the role the release gives that position (a mismatch means the release would train the
other side of the dialogue); a value must not hold `[SEG]` (the release's forward turns any
`[SEG]` into instance queries and then fails, or trains a query block with no phrase) or an
image/video pad token (the model would look for image features that are not there).
"""
from __future__ import annotations

from typing import Any

from instructsam_core import tokens as T

USER_NAMES = ("human", "user")
ASSISTANT_NAMES = ("gpt", "assistant")
PLACEHOLDERS = ("<image>", "<video>")
# Tokens free text cannot carry, and why.
REFUSED_TOKENS = {T.SEG: "query blocks belong to an annotation's answer",
                  T.IMAGE_PAD: "the record's image is placed by the reader, not by the text",
                  T.VIDEO_PAD: "the record's image is placed by the reader, not by the text"}


def role_at(position: int) -> str:
    """The release's role of the turn at `position` (0-based)."""
    return "user" if position % 2 == 0 else "assistant"


def parse_conversations(turns: list[Any] | None) -> tuple[str, ...]:
    """The turns' values as written (roles by position); () for null. ValueError names the turn."""
    if turns is None:
        return ()
    values = []
    for position, turn in enumerate(turns):
        where = f"conversations[{position}]"
        if not isinstance(turn, dict):
            raise ValueError(f"{where} must be an object with 'from' and 'value', got {type(turn).__name__}")
        text = turn.get("value")
        if not isinstance(text, str):
            raise ValueError(f"{where}: 'value' must be a string, got {type(text).__name__}")
        speaker = turn.get("from")
        if speaker is not None:
            role = role_at(position)
            names = USER_NAMES if role == "user" else ASSISTANT_NAMES
            if not isinstance(speaker, str) or speaker.lower() not in names:
                raise ValueError(f"{where}: 'from' is {speaker!r} at a {role} position (turns alternate "
                                 f"user, assistant, ... from the first; {role} turns are from {' or '.join(names)})")
        for token, why in REFUSED_TOKENS.items():
            if token in text:
                raise ValueError(f"{where}: the text holds {token}, which free text cannot carry ({why})")
        values.append(text)
    return tuple(values)


def cleaned(value: str) -> str:
    """A value as a draw renders it: placeholders removed, then stripped."""
    for placeholder in PLACEHOLDERS:
        value = value.replace(placeholder, "")
    return value.strip()


def messages(values: tuple[str, ...]) -> list[tuple[str, str]]:
    """(role, text) of every turn, as a draw renders them."""
    return [(role_at(i), cleaned(value)) for i, value in enumerate(values)]
