"""Which positions and attention mask the language model gets: the two inference layouts.

"release" - what the authors' `inference()` computes, hence what their published numbers were
measured with (reference-design.md, "Inference in the release AS IT RUNS"):
  1. 1-D positions for every token, image tokens included (Qwen3-VL's M-RoPE index is never
     used): a token's position is its index in the sequence, except that the 13 tokens of a query
     block (ref_end, mask_start, Q x [SEG], mask_end), fed in one step, take index + 1; the token
     after a block is back at its index (the same position as the block's mask_end);
  2. the prompt is prefilled bidirectionally (every prompt token sees the whole prompt);
  3. in a block the queries also see `<|mask_end|>` (attention.release_attention_mask).
"trained" - what the weights were trained with (the release's training forward, and every model
trained here): M-RoPE positions, a causal prompt, and each [SEG] run one fully visible block
(attention.hybrid_attention_mask).

Both paths take their layout from here: the generation path (a prompt prefill, then one step per
token, a query block as one step) and the single-forward path (prompt + known answer in one
pass). For the same answer they give the language model the same positions and masks, step by
step or all at once, so their query states agree in either layout.
"""
from __future__ import annotations

import torch

from instructsam_core.attention import hybrid_attention_mask, release_attention_mask
from instructsam_core.configuration import INFERENCE_LAYOUTS

RELEASE, TRAINED = INFERENCE_LAYOUTS


def check_layout(layout: str) -> str:
    if layout not in INFERENCE_LAYOUTS:
        raise ValueError(f"inference_layout must be one of {', '.join(INFERENCE_LAYOUTS)}, got {layout!r}")
    return layout


def block_tokens(input_ids: torch.Tensor, seg_token_id: int) -> torch.Tensor:
    """[B, L] True at the 13 tokens of every query block: each [SEG] run, the two tokens before it
    (ref_end, mask_start) and the one after it (mask_end)."""
    is_seg = input_ids == seg_token_id
    block = is_seg.clone()
    block[:, :-1] |= is_seg[:, 1:]
    block[:, :-2] |= is_seg[:, 2:]
    block[:, 1:] |= is_seg[:, :-1]
    return block


def release_positions(input_ids: torch.Tensor, seg_token_id: int, past_length: int = 0) -> torch.Tensor:
    """The release's 1-D positions [3, B, L] (the same in all three M-RoPE sections) of L new tokens
    after `past_length` cached ones: index, + 1 inside query blocks."""
    index = torch.arange(input_ids.shape[1], device=input_ids.device) + past_length
    positions = index[None, :] + block_tokens(input_ids, seg_token_id).long()
    return positions.unsqueeze(0).expand(3, -1, -1)


def sequence_inputs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    padding_mask: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
    mm_token_type_ids: torch.Tensor | None,
    prompt_lengths: torch.Tensor | None,
    layout: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(positions [3, B, L], mask [B, 1, L, L], M-RoPE deltas or None) for complete sequences:
    a prompt alone (the generation prefill) or prompt + answer (the single forward). `model` is
    the InstructSamForSegmentation (its config and M-RoPE index; not imported: modeling uses this).

    `prompt_lengths` [B]: where each row's prompt ends; the release layout needs it (its prompt
    is bidirectional, its answer is not).
    """
    seg = model.config.seg_token_index
    if check_layout(layout) == RELEASE:
        if prompt_lengths is None:
            raise ValueError("the release inference layout needs prompt_lengths (where each row's prompt ends)")
        mask = release_attention_mask(input_ids, seg, prompt_lengths, padding_mask)
        return release_positions(input_ids, seg), mask, None
    positions, deltas = model.position_ids(input_ids, mm_token_type_ids, image_grid_thw, padding_mask)
    return positions, hybrid_attention_mask(input_ids, seg, padding_mask), deltas


def step_inputs(
    input_ids: torch.Tensor, seg_token_id: int, past_length: int, deltas: torch.Tensor | None, layout: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [3, 1, n], mask [1, 1, n, past + n]) of one decoding step of n tokens (one
    token, or a whole query block) after `past_length` cached tokens of the same row."""
    if check_layout(layout) == RELEASE:
        no_prompt = torch.zeros(1, dtype=torch.long, device=input_ids.device)
        mask = release_attention_mask(input_ids, seg_token_id, no_prompt, past_length=past_length)
        return release_positions(input_ids, seg_token_id, past_length), mask
    index = torch.arange(past_length, past_length + input_ids.shape[1], device=input_ids.device)
    positions = (index + deltas[0]).view(1, 1, -1).expand(3, 1, -1)
    return positions, hybrid_attention_mask(input_ids, seg_token_id, past_length=past_length)


__all__ = ["RELEASE", "TRAINED", "check_layout", "block_tokens", "release_positions", "sequence_inputs",
           "step_inputs"]
