"""The hybrid attention mask: causal everywhere, except that each contiguous run of `[SEG]`
positions is one fully visible block.

Inside a block the instance queries see each other in both directions (so they can divide the
instances among themselves) and every earlier token. Earlier tokens never see the queries (the
causal part already ensures that) and later tokens see them causally. The same rule is used in
training, in the single-forward path and in every generation step, so the three agree exactly.
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
    batch, length = input_ids.shape
    device = input_ids.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    run_id, _ = seg_runs(input_ids == seg_token_id)
    same_block = (run_id[:, :, None] == run_id[:, None, :]) & (run_id[:, :, None] > 0)
    new_part = causal.unsqueeze(0) | same_block
    past_part = torch.ones(batch, length, past_length, dtype=torch.bool, device=device)
    mask = torch.cat([past_part, new_part], dim=2)
    if padding_mask is not None:
        keys = padding_mask.bool()
        if keys.shape[1] == length and past_length:
            keys = torch.cat([torch.ones(batch, past_length, dtype=torch.bool, device=device), keys], dim=1)
        mask = mask & keys[:, None, :]
    diagonal = torch.zeros_like(mask)
    diagonal[:, torch.arange(length), past_length + torch.arange(length, device=device)] = True
    return (mask | diagonal).unsqueeze(1)
