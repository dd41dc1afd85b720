"""The hybrid attention mask, checked against patterns written out by hand."""
import torch

from instructsam_core.attention import hybrid_attention_mask, seg_runs

S = 9  # the [SEG] id in these tests


def test_two_phrase_blocks_exact_pattern():
    # tokens: a b S S c S S d   (two query blocks of two queries)
    ids = torch.tensor([[1, 2, S, S, 3, S, S, 4]])
    got = hybrid_attention_mask(ids, S)[0, 0].int()
    expected = torch.tensor([
        # a  b  S  S  c  S  S  d
        [1, 0, 0, 0, 0, 0, 0, 0],  # a
        [1, 1, 0, 0, 0, 0, 0, 0],  # b
        [1, 1, 1, 1, 0, 0, 0, 0],  # S1 of block 1 sees its partner ahead of it
        [1, 1, 1, 1, 0, 0, 0, 0],  # S2 of block 1
        [1, 1, 1, 1, 1, 0, 0, 0],  # c sees block 1 causally
        [1, 1, 1, 1, 1, 1, 1, 0],  # block 2 sees block 1 and itself, both ways
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 1],  # d
    ])
    assert torch.equal(got, expected)


def test_padding_hides_keys_but_keeps_diagonal():
    ids = torch.tensor([[1, S, S, 0, 0]])
    pad = torch.tensor([[1, 1, 1, 0, 0]])
    got = hybrid_attention_mask(ids, S, pad)[0, 0].int()
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],  # a padded row sees real keys and itself only
        [1, 1, 1, 0, 1],
    ])
    assert torch.equal(got, expected)


def test_cached_step_sees_all_past_and_opens_its_block():
    ids = torch.tensor([[5, 6, S, S, 7]])  # ref_end, mask_start, 2 queries, mask_end after 3 cached tokens
    got = hybrid_attention_mask(ids, S, past_length=3)[0, 0].int()
    expected = torch.tensor([
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ])
    assert torch.equal(got, expected)


def test_seg_runs_numbers_runs_and_offsets():
    is_seg = torch.tensor([[False, True, True, True, False, True, True]])
    run_id, offset = seg_runs(is_seg)
    assert run_id.tolist() == [[0, 1, 1, 1, 0, 2, 2]]
    assert offset.tolist() == [[0, 0, 1, 2, 0, 0, 1]]
