"""The attention masks of both inference layouts, checked against patterns written out by hand."""
import torch

from instructsam_core.attention import hybrid_attention_mask, release_attention_mask, seg_runs
from instructsam_core.inference_layout import release_positions

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


def test_release_mask_prompt_both_ways_and_queries_see_mask_end():
    # prompt x y | answer: a m S S e c   (m = mask_start, e = mask_end; a block of two queries)
    ids = torch.tensor([[1, 2, 3, 4, S, S, 5, 6]])
    got = release_attention_mask(ids, S, torch.tensor([2]))[0, 0].int()
    expected = torch.tensor([
        # x  y  a  m  S  S  e  c
        [1, 1, 0, 0, 0, 0, 0, 0],  # x sees the prompt token after it
        [1, 1, 0, 0, 0, 0, 0, 0],  # y
        [1, 1, 1, 0, 0, 0, 0, 0],  # a: causal from here on
        [1, 1, 1, 1, 0, 0, 0, 0],  # m
        [1, 1, 1, 1, 1, 1, 1, 0],  # S1 sees its partner and <|mask_end|>
        [1, 1, 1, 1, 1, 1, 1, 0],  # S2
        [1, 1, 1, 1, 1, 1, 1, 0],  # e
        [1, 1, 1, 1, 1, 1, 1, 1],  # c
    ])
    assert torch.equal(got, expected)


def test_release_block_step_after_a_cache_and_padded_rows():
    # Generation: the block r m S S e fed after 3 cached tokens; no prompt in this step.
    ids = torch.tensor([[7, 4, S, S, 5]])
    got = release_attention_mask(ids, S, torch.tensor([0]), past_length=3)[0, 0].int()
    expected = torch.tensor([
        [1, 1, 1, 1, 0, 0, 0, 0],  # r: the past and itself
        [1, 1, 1, 1, 1, 0, 0, 0],  # m
        [1, 1, 1, 1, 1, 1, 1, 1],  # S1: the whole block, e included
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],  # e
    ])
    assert torch.equal(got, expected)
    # A batch: row 2 has a shorter prompt and is right-padded; padded keys stay hidden.
    ids = torch.tensor([[1, 2, 3, S, 6], [1, 3, S, 0, 0]])
    pad = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = release_attention_mask(ids, S, torch.tensor([2, 1]), pad)[:, 0].int()
    assert torch.equal(got[1], torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],  # padded rows see real keys and themselves only
        [1, 1, 1, 0, 1],
    ]))
    assert torch.equal(got[0, :2], torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]))


def test_release_positions_shift_each_block_by_one():
    # a b r m S S e c r m S S e : blocks at 2..6 and 8..12
    ids = torch.tensor([[1, 2, 7, 4, S, S, 5, 6, 7, 4, S, S, 5]])
    got = release_positions(ids, S)
    assert got.shape == (3, 1, 13) and torch.equal(got[0], got[1]) and torch.equal(got[0], got[2])
    assert got[0, 0].tolist() == [0, 1, 3, 4, 5, 6, 7, 7, 9, 10, 11, 12, 13]
    # The same block fed as one generation step after 2 cached tokens.
    assert release_positions(ids[:, 2:7], S, past_length=2)[0, 0].tolist() == [3, 4, 5, 6, 7]
