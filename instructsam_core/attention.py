"""The attention masks of the two inference layouts (inference_layout.py says which is which).

Hybrid (the "trained" layout: the release's training forward, and every model trained here):
causal everywhere, except that each contiguous run of `[SEG]` positions is one fully visible
block. Inside a block the instance queries see each other in both directions (so they can divide
the instances among themselves) and every earlier token. Earlier tokens never see the queries
(the causal part already ensures that) and later tokens see them causally.

Release (the "release" layout: what the authors' inference computes, reference-design.md
"Inference in the release AS IT RUNS"): the prompt sees the whole prompt (a bidirectional
prefill); the answer is causal, except that the queries of a block also see the rest of their
block, its `<|mask_end|>` included.
"""
from __future__ import annotations

import torch


def seg_runs(is_seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Label the `[SEG]` runs of each row.

    Returns (run_id, offset): run_id is 0 outside runs and 1, 2, ... for the runs of a row in
    order; offset is the position of a token inside its run (0 outside runs).
    """
    starts = is_seg.clone()
    starts[:, 1:] &= ~is_seg[:, :-1]
    run_id = torch.cumsum(starts.long(), dim=1) * is_seg.long()
    positions = torch.arange(is_seg.shape[1], device=is_seg.device).expand_as(is_seg)
    # Position of the latest run start at or before each token; cummax carries it forward.
    start_positions = torch.where(starts, positions, torch.zeros_like(positions))
    last_start = torch.cummax(start_positions, dim=1).values
    offset = (positions - last_start) * is_seg.long()
    return run_id, offset


def hybrid_attention_mask(
    input_ids: torch.Tensor,
    seg_token_id: int,
    padding_mask: torch.Tensor | None = None,
    past_length: int = 0,
) -> torch.Tensor:
    """Boolean mask [B, 1, L, past_length + L], True where a query token may attend to a key.

    `input_ids` are the L new tokens; the `past_length` cached tokens before them are all
    visible (a query block is always fed whole, never split across steps). `padding_mask`
    ([B, past_length + L] or [B, L], 1 = real token) hides padded keys. Every row keeps its
    own diagonal so that padded rows never have an empty softmax.
    """
    causal = _causal(input_ids)
    run_id, _ = seg_runs(input_ids == seg_token_id)
    same_block = (run_id[:, :, None] == run_id[:, None, :]) & (run_id[:, :, None] > 0)
    return _with_past_and_padding(causal | same_block, padding_mask, past_length)


def release_attention_mask(
    input_ids: torch.Tensor,
    seg_token_id: int,
    prompt_lengths: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    past_length: int = 0,
) -> torch.Tensor:
    """Boolean mask [B, 1, L, past_length + L] of the release's inference.

    The first `prompt_lengths[b]` new tokens of row b are its prompt and see each other in both
    directions (the release prefills the prompt under an all-true mask); every later token sees
    the keys before it, and a `[SEG]` token also sees the rest of its run and the token right
    after the run (`<|mask_end|>`, fed in the same step). Cached keys and padding as in
    `hybrid_attention_mask`.
    """
    length = input_ids.shape[1]
    is_seg = input_ids == seg_token_id
    run_id, _ = seg_runs(is_seg)
    # The key side of a block: its [SEG] run plus the token that closes it.
    closes_run = torch.zeros_like(is_seg)
    closes_run[:, 1:] = is_seg[:, :-1] & ~is_seg[:, 1:]
    key_run = run_id.clone()
    key_run[:, 1:] = torch.where(closes_run[:, 1:], run_id[:, :-1], run_id[:, 1:])
    sees_block = is_seg[:, :, None] & (run_id[:, :, None] == key_run[:, None, :])
    index = torch.arange(length, device=input_ids.device)
    in_prompt = index[None, :] < prompt_lengths.to(input_ids.device).view(-1, 1)
    prompt = in_prompt[:, :, None] & in_prompt[:, None, :]
    return _with_past_and_padding(_causal(input_ids) | sees_block | prompt, padding_mask, past_length)


def _causal(input_ids: torch.Tensor) -> torch.Tensor:
    length = input_ids.shape[1]
    return torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril().unsqueeze(0)


def _with_past_and_padding(
    new_part: torch.Tensor, padding_mask: torch.Tensor | None, past_length: int
) -> torch.Tensor:
    """[B, L, L] rule among the new tokens -> [B, 1, L, past + L] with the cached keys visible,
    padded keys hidden and every row's own diagonal kept."""
    batch, length = new_part.shape[0], new_part.shape[1]
    device = new_part.device
    past_part = torch.ones(batch, length, past_length, dtype=torch.bool, device=device)
    mask = torch.cat([past_part, new_part.expand(batch, length, length)], dim=2)
    if padding_mask is not None:
        keys = padding_mask.bool()
        if keys.shape[1] == length and past_length:
            keys = torch.cat([torch.ones(batch, past_length, dtype=torch.bool, device=device), keys], dim=1)
        mask = mask & keys[:, None, :]
    diagonal = torch.zeros_like(mask)
    diagonal[:, torch.arange(length), past_length + torch.arange(length, device=device)] = True
    return (mask | diagonal).unsqueeze(1)
