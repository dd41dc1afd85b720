"""Training batches: conversations -> token ids and labels, SAM3's phrase prompts, target masks.

A conversation is laid out as the release's processor lays it out: every message rendered by
Qwen3-VL's chat template on its own and the pieces concatenated -
    <|im_start|>user\\n<|vision_start|><|image_pad|>...<|vision_end|>Q1<|im_end|>\\n
    <|im_start|>assistant\\nA1<|im_end|>\\n<|im_start|>user\\nQ2<|im_end|>\\n<|im_start|>assistant\\nA2<|im_end|>\\n
(the image in the first user message only; none in a text-only conversation). Labels are the
assistant answers and their <|im_end|>, except every `[SEG]` and the token after it (the model
does not predict its own queries). An answer is its phrases' blocks joined by ", ".
Free-text messages (a record's `conversations`, conversations.py) follow the turns, each message
tokenized as one string the way the release's processor does it: an assistant message's labels
are its tokens after the `<|im_start|>assistant\n` prefix up to and with its <|im_end|> (not the
closing newline; vision markers excepted, as the release excepts them), a user message has none.

SAM3's phrase prompt in training is, like the release's, the bare phrase: the tokenizer's ids of
the phrase text without the ref markers, cut to `max_phrase_tokens` (`bare_prompts: False` leaves
the choice to the model's `phrase_prompt` config, which inference uses).
"""
from __future__ import annotations

import torch

from instructsam_core import tokens as T
from instructsam_core.images import as_rgb_array
from instructsam_core.processing import IGNORE_INDEX


def encode_conversation(processor, turns: list[tuple[str, list[str]]], num_image_tokens: int | None,
                        messages: list[tuple[str, str]] = ()) -> tuple[list[int], list[int]]:
    """Token ids and labels of one sample's conversation (see the module docstring);
    `num_image_tokens` None: no image."""

    def encode(text: str) -> list[int]:
        return list(processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def user(text: str) -> list[int]:
        if ids or num_image_tokens is None:
            return encode(f"{T.IM_START}user\n{text}{T.IM_END}\n")
        return (encode(f"{T.IM_START}user\n{T.VISION_START}") + [processor.token_ids[T.IMAGE_PAD]] * num_image_tokens
                + encode(f"{T.VISION_END}{text}{T.IM_END}\n"))

    ids: list[int] = []
    labels: list[int] = []
    newline = encode("\n")
    opening = encode(f"{T.IM_START}assistant\n")
    for question, phrases in turns:
        asked = user(question)
        answer = T.PHRASE_SEPARATOR.join(T.phrase_block(p, processor.num_queries) for p in phrases)
        body = encode(answer) + [processor.token_ids[T.IM_END]]
        ids += asked + opening + body + newline
        labels += [IGNORE_INDEX] * (len(asked) + len(opening)) + processor._labels(body) + [IGNORE_INDEX] * len(newline)
    unlabelled = {processor.tokenizer.convert_tokens_to_ids(t) for t in (T.VISION_START, T.VISION_END)}
    for role, text in messages:
        if role == "user":
            message = user(text)
            ids += message
            labels += [IGNORE_INDEX] * len(message)
            continue
        message = encode(f"{T.IM_START}assistant\n{text}{T.IM_END}\n")
        end = len(message) - len(newline)
        inner = [IGNORE_INDEX if t in unlabelled else t for t in processor._labels(message[len(opening):end])]
        ids += message
        labels += [IGNORE_INDEX] * len(opening) + inner + [IGNORE_INDEX] * len(newline)
    return ids, labels


def bare_prompts(processor, phrases: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM3 prompt ids [P, T] (zero-padded) and validity mask [P, T] of bare phrases."""
    rows = [list(processor.tokenizer(p, add_special_tokens=False)["input_ids"])[:max_tokens] for p in phrases]
    length = max([len(r) for r in rows] + [1])
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


class TrainingCollator:
    """Examples -> model inputs, labels, phrase prompts, per-phrase target masks and gates.

    `targets` lists bool tensors [n_instances, s, s] over all phrases of the batch in row-major
    order (the order of the model's query blocks); `trains_masks` [P] says which of them train
    the mask and score terms (dataset.supervise).
    """

    def __init__(self, processor, bare_phrase_prompt: bool = True) -> None:
        self.processor = processor
        self.bare_phrase_prompt = bare_phrase_prompt

    def __call__(self, examples: list[dict]) -> dict:
        processor = self.processor
        batch: dict = {}
        tokens: list[int | None] = [None] * len(examples)
        pictured = [b for b, e in enumerate(examples) if e["image"] is not None]
        if pictured:
            pixels = processor.pixels([as_rgb_array(examples[b]["image"]) for b in pictured])
            merge = processor.merge_size**2
            for b, (t, h, w) in zip(pictured, pixels["image_grid_thw"].tolist()):
                tokens[b] = t * h * w // merge
            sam = pixels.pop("sam_pixel_values")
            if len(pictured) < len(examples):  # text-only rows: a blank SAM3 image keeps rows aligned
                sam = torch.zeros((len(examples), *sam.shape[1:]), dtype=sam.dtype).index_copy_(
                    0, torch.tensor(pictured), sam)
            batch.update(pixels, sam_pixel_values=sam)
        rows = [encode_conversation(processor, e["turns"], tokens[b], e.get("messages", ()))
                for b, e in enumerate(examples)]
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), processor.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for b, (ids, label_row) in enumerate(rows):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            attention_mask[b, : len(ids)] = 1
            labels[b, : len(ids)] = torch.tensor(label_row)
        batch.update({
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": (input_ids == processor.token_ids[T.IMAGE_PAD]).int(),
            "labels": labels,
        })
        phrases = [p for e in examples for _, turn_phrases in e["turns"] for p in turn_phrases]
        if self.bare_phrase_prompt and phrases:
            batch["phrase_ids"], batch["phrase_mask"] = bare_prompts(processor, phrases,
                                                                     processor.config.max_phrase_tokens)
        batch["targets"] = [torch.from_numpy(m) for e in examples for m in e["masks"]]
        batch["trains_masks"] = torch.tensor([e["trains_masks"] for e in examples for _ in e["masks"]],
                                             dtype=torch.bool)
        batch["sources"] = [e["source"] for e in examples]
        return batch
