"""Greedy decoding in which every generated `<|object_ref_end|>` opens a query block.

When the model emits `<|object_ref_end|>`, the next step feeds the whole 13-token block
(ref_end, mask_start, Q x [SEG], mask_end) at once and keeps the Q query states; decoding then
continues from the block's last token. Positions and masks of the prefill and of every step
come from the config's inference layout (inference_layout.py). The release advanced its cache
position by 10 instead of 13 after a block; with its 1-D positions counted from the attention
mask and a cache that grows by what is fed, that number changed nothing it computed, so the
cache here simply holds every token fed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import time

import torch
from transformers.cache_utils import DynamicCache

from instructsam_core.inference_layout import sequence_inputs, step_inputs
from instructsam_core.modeling import InstructSamForSegmentation


@dataclass
class GenerationResult:
    """Generated answer tokens (blocks included), one phrase per block, and the block states [P, Q, H]."""

    token_ids: list[int] = field(default_factory=list)
    phrases: list[list[int]] = field(default_factory=list)
    query_states: torch.Tensor | None = None
    # Seconds: the prompt prefill, and each decoding step as (tokens fed, seconds).
    prefill_seconds: float = 0.0
    step_seconds: list[tuple[int, float]] = field(default_factory=list)


@torch.no_grad()
def generate_queries(
    model: InstructSamForSegmentation,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
    mm_token_type_ids: torch.Tensor | None,
    max_new_tokens: int = 128,
    forced_ids: list[int] | None = None,
) -> GenerationResult:
    """Decode one prompt (batch 1, no padding) greedily.

    `forced_ids`, when given, are fed instead of the model's choices for the first steps
    (teacher forcing through the same cached path), which lets tests compare this path with the
    single-forward one on a known answer.
    """
    if input_ids.shape[0] != 1:
        raise ValueError("generation runs one prompt at a time")
    config = model.config
    seg, ref_start, ref_end = config.seg_token_index, config.ref_start_token_index, config.ref_end_token_index
    stop = {config.im_end_token_id, getattr(config.text_config, "eos_token_id", None)} - {None}
    block_tail = [config.seg_start_token_index] + [seg] * config.max_seg_nums + [config.seg_end_token_index]
    forced = list(forced_ids or [])

    result = GenerationResult()
    clock = _Clock(input_ids.device)
    layout = config.inference_layout
    embeds, visual_mask, deepstack = model.embed_tokens(input_ids, pixel_values, image_grid_thw)
    prompt_length = torch.tensor([input_ids.shape[1]], device=input_ids.device)
    positions, mask, deltas = sequence_inputs(
        model, input_ids, None, image_grid_thw, mm_token_type_ids, prompt_length, layout
    )
    cache = DynamicCache(config=config.text_config)
    hidden = model.run_language_model(embeds, positions, mask, cache, visual_mask, deepstack)
    result.prefill_seconds = clock.lap()

    states: list[torch.Tensor] = []
    phrase_start = 0  # index in result.token_ids where the current phrase may begin
    while len(result.token_ids) < max_new_tokens:
        token = forced.pop(0) if forced else int(model.lm_head(hidden[:, -1]).argmax(-1))
        phrase = _current_phrase(result.token_ids[phrase_start:], ref_start)
        step = [token]
        if token == ref_end and phrase:
            step = [token] + block_tail
        result.token_ids.extend(step)
        if token in stop:
            break
        ids = torch.tensor([step], dtype=torch.long, device=input_ids.device)
        step_positions, step_mask = step_inputs(ids, seg, cache.get_seq_length(), deltas, layout)
        step_embeds, _, _ = model.embed_tokens(ids)
        hidden = model.run_language_model(step_embeds, step_positions, step_mask, cache)
        result.step_seconds.append((len(step), clock.lap()))
        if len(step) > 1:
            states.append(hidden[0, 2 : 2 + config.max_seg_nums])
            result.phrases.append(phrase)
            phrase_start = len(result.token_ids)
    if states:
        result.query_states = torch.stack(states)
    return result


def _current_phrase(tokens: list[int], ref_start: int) -> list[int]:
    """Tokens after the last `<|object_ref_start|>` (the phrase being closed), or [] if none."""
    for index in range(len(tokens) - 1, -1, -1):
        if tokens[index] == ref_start:
            return tokens[index + 1 :]
    return []


class _Clock:
    """Lap timer that waits for queued GPU work, so laps measure the work, not its launch."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.last = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        elapsed, self.last = now - self.last, now
        return elapsed
