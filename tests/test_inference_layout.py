"""The release's inference layout (reference-design.md, "Inference in the release AS IT RUNS"),
checked against expectations written here from those facts, never computed by the code under test:
  1. 1-D positions for every token, the 13-token query block shifted by +1;
  2. the prompt prefilled under an all-true mask;
  3. the queries of a block also see `<|mask_end|>`.
The model is a tiny checkpoint in the release's own layout (releasemaker.py), whose config.json
has no `inference_layout`: it runs release-exact by default.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from releasemaker import ADDED_IDS, BIG, BLUE, CIRCLE, QUERIES, QWEN_IDS, RED, SQUARE, build_release_directory
from transformers.cache_utils import DynamicCache

from instructsam_core import tokens as T
from instructsam_core.configuration import RELEASE_BEHAVIOUR, InstructSamConfig
from instructsam_core.errors import CheckpointError, UserError
from instructsam_core.generation import generate_queries
from instructsam_core.modeling import InstructSamForSegmentation
from instructsam_core.predictor import Predictor
from instructsam_core.processing import InstructSamProcessor

RS, RE, IM_END = QWEN_IDS[T.REF_START], QWEN_IDS[T.REF_END], QWEN_IDS[T.IM_END]
SEG, MASK_START, MASK_END = ADDED_IDS[T.SEG], ADDED_IDS[T.MASK_START], ADDED_IDS[T.MASK_END]
COMMA = 11  # "," in the release directory's tokenizer (releasemaker.WORDS)
ONE = ["red circle"]
TWO = ["red circle", "big blue square"]
# Positions of the answer tokens, counted from the prompt's length p (facts 1): a token's index,
# +1 for each of the 13 tokens of a block (ref_end .. mask_end); the token after a block is back
# at its index. One phrase: rs red circle | re ms S*10 me | im_end.
ONE_POSITIONS = [0, 1, 2] + list(range(4, 17)) + [16]
# Two phrases: ... | , rs big blue square | re ms S*10 me | im_end.
TWO_POSITIONS = [0, 1, 2] + list(range(4, 17)) + [16, 17, 18, 19, 20] + list(range(22, 35)) + [34]
# How many keys each answer row sees, counted from p (every row of this layout sees a prefix of
# the sequence): a token sees itself and all before it; the 10 queries of a block also see
# the block's mask_end (facts 3).
ONE_VISIBLE = [1, 2, 3, 4, 5] + [16] * 10 + [16, 17]
TWO_VISIBLE = [1, 2, 3, 4, 5] + [16] * 10 + [16, 17, 18, 19, 20, 21, 22, 23] + [34] * 10 + [34, 35]
CASES = {1: (ONE, ONE_POSITIONS, ONE_VISIBLE), 2: (TWO, TWO_POSITIONS, TWO_VISIBLE)}


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    return build_release_directory(tmp_path_factory.mktemp("layout") / "InstructSAM-tiny")


@pytest.fixture(scope="module")
def release_model(release_dir):
    model = InstructSamForSegmentation.from_pretrained(release_dir).eval()
    return model, InstructSamProcessor.from_pretrained(release_dir, model.config)


def picture(height=90, width=140, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def answer_ids(phrases: list[str]) -> list[int]:
    """The answer layout of `phrases` in the release tokenizer's ids, written out by hand."""
    words = {"red": RED, "circle": CIRCLE, "big": BIG, "blue": BLUE, "square": SQUARE}
    ids: list[int] = []
    for n, phrase in enumerate(phrases):
        if n:
            ids.append(COMMA)
        ids += [RS] + [words[w] for w in phrase.split()] + [RE, MASK_START] + [SEG] * QUERIES + [MASK_END]
    return ids + [IM_END]


def expected_mask(prompt_length: int, visible: list[int]) -> torch.Tensor:
    """[L, L]: the prompt rows see the whole prompt (facts 2); answer row a sees p + visible[a] keys."""
    p = prompt_length
    length = p + len(visible)
    mask = torch.zeros(length, length, dtype=torch.bool)
    mask[:p, :p] = True
    for a, count in enumerate(visible):
        mask[p + a, : p + count] = True
    return mask


class Recorder:
    """Positions and masks of every call of the language model."""

    def __init__(self, model):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handle = model.model.language_model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.calls.append((kwargs["position_ids"].clone(), kwargs["attention_mask"].clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def one_dimensional(positions: torch.Tensor) -> list[int]:
    """The positions of one row, asserting that the three M-RoPE sections carry the same 1-D index."""
    assert positions.shape[0] == 3 and positions.shape[1] == 1
    assert torch.equal(positions[0], positions[1]) and torch.equal(positions[0], positions[2])
    return positions[0, 0].tolist()


def forced_tokens(phrases: list[str]) -> list[int]:
    """What the model itself emits for this answer: the answer without the blocks' tails."""
    return [t for t in answer_ids(phrases) if t not in (MASK_START, SEG, MASK_END)]


def generate(model, processor, image, instruction, phrases):
    prompt = processor([image], [instruction])
    forced = forced_tokens(phrases)
    return prompt, generate_queries(model, prompt["input_ids"], prompt["pixel_values"], prompt["image_grid_thw"],
                                    prompt["mm_token_type_ids"], max_new_tokens=64, forced_ids=forced)


def test_the_hand_written_answers_are_the_processors(release_model):
    _, processor = release_model
    for count, (phrases, _, _) in CASES.items():
        assert processor.answer_ids(T.answer_for_phrases(phrases, QUERIES)) == answer_ids(phrases), count


def test_the_cli_knows_the_configs_layouts_without_importing_torch():
    from instructsam_core import commands
    from instructsam_core.configuration import INFERENCE_LAYOUTS

    assert commands.INFERENCE_LAYOUTS == INFERENCE_LAYOUTS


def test_a_release_checkpoint_runs_release_exact_and_models_written_here_record_their_layout(
        release_model, tiny_model_dir):
    model, _ = release_model
    assert model.config.inference_layout == "release"  # its config.json has no such field
    assert json.loads((tiny_model_dir / "config.json").read_text())["inference_layout"] == "trained"
    assert InstructSamConfig.from_pretrained(tiny_model_dir).inference_layout == "trained"
    assert RELEASE_BEHAVIOUR["inference_layout"] == "release"
    defaults = InstructSamConfig()
    assert all(getattr(defaults, name) == value for name, value in RELEASE_BEHAVIOUR.items())


@pytest.mark.parametrize("count", [1, 2])
def test_single_forward_positions_and_mask_are_the_releases(release_model, count):
    model, processor = release_model
    phrases, positions, visible = CASES[count]
    p = processor([picture()], ["find them"])["input_ids"].shape[1]  # the prompt alone
    batch = processor([picture()], ["find them"], phrases=[phrases])
    assert batch["input_ids"][0, p:].tolist() == answer_ids(phrases)
    assert batch["prompt_lengths"].tolist() == [p]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_sizes", "sam_pixel_values")}
    with Recorder(model) as recorder, torch.no_grad():
        model(**inputs, compute_logits=False)
    (got_positions, got_mask), = recorder.calls
    # Every token, image tokens included, at its 1-D index; the answer as written above.
    assert one_dimensional(got_positions) == list(range(p)) + [p + x for x in positions]
    assert torch.equal(got_mask[0, 0], expected_mask(p, visible))


@pytest.mark.parametrize("count", [1, 2])
def test_generation_positions_and_masks_are_the_releases_step_by_step(release_model, count):
    model, processor = release_model
    phrases, positions, visible = CASES[count]
    with Recorder(model) as recorder:
        prompt, result = generate(model, processor, picture(), "find them", phrases)
    p = prompt["input_ids"].shape[1]
    full = expected_mask(p, visible)
    (prefill_positions, prefill_mask), *steps = recorder.calls
    assert one_dimensional(prefill_positions) == list(range(p))
    assert prefill_mask.shape == (1, 1, p, p) and bool(prefill_mask.all())  # the whole prompt, both ways
    # One step per emitted token; a block is one step of 13 tokens. im_end ends decoding unfed.
    sizes = [got_positions.shape[-1] for got_positions, _ in steps]
    expected_sizes = {1: [1, 1, 1, 13], 2: [1, 1, 1, 13, 1, 1, 1, 1, 1, 13]}[count]
    assert sizes == expected_sizes
    start = 0
    for got_positions, got_mask in steps:
        n = got_positions.shape[-1]
        assert one_dimensional(got_positions) == [p + x for x in positions[start : start + n]]
        assert torch.equal(got_mask[0, 0], full[p + start : p + start + n, : p + start + n])
        start += n
    assert len(result.phrases) == count


def release_reenacted(model, prompt, forced: list[int]) -> torch.Tensor:
    """The release's inference() re-enacted from its description, with its own bookkeeping on the
    stock language model: generate keeps a 2-D attention mask that grows by one for every token
    it emits; the release passes position_ids = cumsum(that mask) - 1 (2-D, the last n) and its own
    4-D masks: all true for the prompt (its cache already has layers) and for single tokens; for
    the block it appends 13 ones, masks ref_end and mask_start causally, and afterwards appends
    12 more ones. Returns the query states [P, Q, H] (the block's outputs 2 .. -1)."""
    config = model.config
    language_model = model.model.language_model
    table = model.model.get_input_embeddings()
    embeds, visual, deepstack = model.embed_tokens(prompt["input_ids"], prompt["pixel_values"],
                                                   prompt["image_grid_thw"])
    cache = DynamicCache(config=config.text_config)
    counted = [1] * prompt["input_ids"].shape[1]

    def run(inputs_embeds, mask, counts, **extra):
        n = inputs_embeds.shape[1]
        position_ids = (torch.tensor(counts).cumsum(0) - 1)[-n:].view(1, n)
        return language_model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids,
                              cache=cache, use_cache=True, **extra).last_hidden_state

    with torch.no_grad():
        run(embeds, torch.ones(1, 1, 1, len(counted), dtype=torch.bool), counted,
            visual_pos_masks=visual, deepstack_visual_embeds=deepstack)
        states = []
        for token in forced:
            if token == IM_END:
                break
            counted = counted + [1]  # generate's one for the token it just emitted
            if token == RE:
                ids = torch.tensor([[RE, MASK_START]])
                block = torch.cat([table(ids), model.model.mask_queries[None], table(torch.tensor([[MASK_END]]))], 1)
                counts = counted + [1] * (QUERIES + 3)
                mask = torch.ones(1, 1, QUERIES + 3, len(counts) - 1, dtype=torch.bool)
                mask[0, 0, 0, -(QUERIES + 2):] = False
                mask[0, 0, 1, -(QUERIES + 1):] = False
                states.append(run(block, mask, counts)[0, 2:-1])
                counted = counted + [1] * (QUERIES + 2)  # the release's 12 more ones
            else:
                run(table(torch.tensor([[token]])), torch.ones(1, 1, 1, len(counted), dtype=torch.bool), counted)
    return torch.stack(states)


@pytest.mark.parametrize("count", [1, 2])
def test_generation_single_forward_and_the_reenacted_release_give_the_same_query_states(release_model, count):
    model, processor = release_model
    phrases = CASES[count][0]
    prompt, result = generate(model, processor, picture(), "find them", phrases)
    batch = processor([picture()], ["find them"], phrases=[phrases])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_sizes", "sam_pixel_values")}
    with torch.no_grad():
        single = model(**inputs, compute_logits=False).query_states
    release = release_reenacted(model, prompt, forced_tokens(phrases))
    assert result.query_states.shape == single.shape == release.shape == (count, QUERIES, model.config.text_hidden_size)
    assert (result.query_states - single).abs().max() <= 1e-5
    assert (release - single).abs().max() <= 1e-5
    assert (release - result.query_states).abs().max() <= 1e-5


def test_the_trained_layout_stays_available_and_differs(release_model, release_dir):
    model, processor = release_model
    batch = processor([picture()], ["find them"], phrases=[TWO])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_sizes", "sam_pixel_values")}
    with torch.no_grad():
        release = model(**inputs, compute_logits=False).query_states
        model.config.inference_layout = "trained"
        try:
            with Recorder(model) as recorder:
                trained = model(**inputs, compute_logits=False).query_states
        finally:
            model.config.inference_layout = "release"
    (positions, mask), = recorder.calls
    image = batch["input_ids"][0] == model.config.image_token_id
    assert not torch.equal(positions[1, 0, image], positions[2, 0, image])  # M-RoPE: height and width differ
    assert not bool(mask[0, 0, 0, 1])  # a causal prompt
    assert (release - trained).abs().max() > 1e-3
    assert Predictor.from_pretrained(release_dir, inference_layout="trained").model.config.inference_layout == "trained"
    with pytest.raises(UserError, match="inference layout"):
        Predictor.from_pretrained(release_dir, inference_layout="paper")


def test_the_release_layout_needs_to_know_where_the_prompt_ends(release_model):
    model, processor = release_model
    batch = processor([picture()], ["find them"], phrases=[ONE])
    dropped = ("labels", "image_sizes", "sam_pixel_values", "prompt_lengths")
    inputs = {k: v for k, v in batch.items() if k not in dropped}
    with pytest.raises(ValueError, match="prompt_lengths"), torch.no_grad():
        model(**inputs, compute_logits=False)


def test_a_batch_of_frames_gives_each_what_it_would_get_alone(release_model):
    """Different image sizes (prompt lengths, padding) and one or two phrases in one call."""
    model, processor = release_model
    images = [picture(90, 140, seed=1), picture(150, 60, seed=2), picture(70, 70, seed=3)]
    phrase_lists = [ONE, TWO, ["big blue square"]]
    instructions = ["find them", "find the red circle and the big blue square", "square"]
    predictor = Predictor(model, processor, threshold=0.0)
    batch = processor(images, instructions, phrases=phrase_lists)
    assert len(set(batch["prompt_lengths"].tolist())) == 3 and bool((batch["attention_mask"] == 0).any())
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_sizes", "sam_pixel_values")}
    with torch.no_grad():
        together = model(**inputs, compute_logits=False).query_states
    alone = []
    for image, instruction, phrases in zip(images, instructions, phrase_lists):
        single = processor([image], [instruction], phrases=[phrases])
        single = {k: v for k, v in single.items() if k not in ("labels", "image_sizes", "sam_pixel_values")}
        with torch.no_grad():
            alone.append(model(**single, compute_logits=False).query_states)
    assert (together - torch.cat(alone)).abs().max() <= 1e-5
    batched = predictor.predict_batch(images, instructions, phrase_lists)
    for image, instruction, phrases, got in zip(images, instructions, phrase_lists, batched):
        want = predictor.predict(image, instruction, phrases=phrases)
        assert [(i.phrase, i.query_index) for i in got.instances] == [(i.phrase, i.query_index) for i in want.instances]
        assert max(abs(a.score - b.score) for a, b in zip(got.instances, want.instances)) <= 1e-5


def _write_config(directory, change) -> None:
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_layout_of_configs_written_before_the_field_existed_and_bad_values(tiny_model_dir, tmp_path):
    copy = tmp_path / "older"
    shutil.copytree(tiny_model_dir, copy)
    _write_config(copy, lambda raw: raw.pop("inference_layout"))  # written here before the field: trained
    assert InstructSamConfig.from_pretrained(copy).inference_layout == "trained"
    _write_config(copy, lambda raw: raw.pop("max_phrase_tokens"))  # nothing of this project: the release's
    assert InstructSamConfig.from_pretrained(copy).inference_layout == "release"
    _write_config(copy, lambda raw: raw.update(inference_layout="paper"))
    with pytest.raises(CheckpointError, match="inference_layout must be one of release, trained"):
        InstructSamConfig.from_pretrained(copy)


def test_saving_keeps_the_layout(release_model, tmp_path):
    model, _ = release_model
    model.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["inference_layout"] == "release"
