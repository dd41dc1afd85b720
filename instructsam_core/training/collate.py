"""Training batches: conversations -> token ids and labels, SAM3's phrase prompts, target masks.

A conversation is laid out as the release's processor lays it out: every message rendered by
Qwen3-VL's chat template on its own and the pieces concatenated -
    <|im_start|>user\\n<|vision_start|><|image_pad|>...<|vision_end|>Q1<|im_end|>\\n
    <|im_start|>assistant\\nA1<|im_end|>\\n<|im_start|>user\\nQ2<|im_end|>\\n<|im_start|>assistant\\nA2<|im_end|>\\n
(the image in the first user message only). Labels are the assistant answers and their
<|im_end|>, except every `[SEG]` and the token after it (the model does not predict its own
queries). An answer is its phrases' blocks joined by ", ".

SAM3's phrase prompt in training is, like the release's, the bare phrase: the tokenizer's ids of
the phrase text without the ref markers, cut to `max_phrase_tokens` (`bare_prompts: False` leaves
the choice to the model's `phrase_prompt` config, which inference uses).
"""
from __future__ import annotations

import torch

from instructsam_core import tokens as T
from instructsam_core.images import as_rgb_array
from instructsam_core.processing import IGNORE_INDEX


def encode_conversation(processor, turns: list[tuple[str, list[str]]], num_image_tokens: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of one sample's conversation (see the module docstring)."""

    def encode(text: str) -> list[int]:
        return list(processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    ids: list[int] = []
    labels: list[int] = []
    newline = encode("\n")
    for index, (question, phrases) in enumerate(turns):
        if index == 0:
            user = (encode(f"{T.IM_START}user\n{T.VISION_START}") + [processor.token_ids[T.IMAGE_PAD]] * num_image_tokens
                    + encode(f"{T.VISION_END}{question}{T.IM_END}\n"))
        else:
            user = encode(f"{T.IM_START}user\n{question}{T.IM_END}\n")
        opening = encode(f"{T.IM_START}assistant\n")
        answer = T.PHRASE_SEPARATOR.join(T.phrase_block(p, processor.num_queries) for p in phrases)
        body = encode(answer) + [processor.token_ids[T.IM_END]]
        ids += user + opening + body + newline
        labels += [IGNORE_INDEX] * (len(user) + len(opening)) + processor._labels(body) + [IGNORE_INDEX] * len(newline)
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
        batch = processor.pixels([as_rgb_array(e["image"]) for e in examples])
        grid = batch["image_grid_thw"].tolist()
        merge = processor.merge_size**2
        rows = [encode_conversation(processor, e["turns"], grid[b][0] * grid[b][1] * grid[b][2] // merge)
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
