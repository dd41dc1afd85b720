"""Behaviour of the InstructSAM model on a tiny random-init instance (acceptance list of issue 2)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from instructsam_core import tokens as T
from instructsam_core.configuration import InstructSamConfig
from instructsam_core.errors import CheckpointError, UserError
from instructsam_core.generation import generate_queries
from instructsam_core.modeling import InstructSamForSegmentation
from instructsam_core.predictor import Predictor, instance_scores
from instructsam_core.processing import IGNORE_INDEX, InstructSamProcessor

RELEASED_PREFIXES = (
    "model.visual.", "model.language_model.", "lm_head.", "model.mask_queries",
    "model.mask_hidden_fcs.0.0.", "model.mask_hidden_fcs.0.2.", "model.text_hidden_fcs.0.0.",
    "model.text_hidden_fcs.0.2.", "model.grounding_model.model.",
)


def load(model_dir, seed: int = 1):
    """Model + processor, with a random (non-zero) query bank so that the queries differ."""
    model = InstructSamForSegmentation.from_pretrained(model_dir).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.model.mask_queries.copy_(torch.randn(model.model.mask_queries.shape, generator=generator))
    return model, InstructSamProcessor.from_pretrained(model_dir, model.config)


def image(height=72, width=104, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def model_inputs(batch):
    return {k: v for k, v in batch.items() if k not in ("labels", "image_sizes")}


def test_bank_rows_replace_seg_embeddings(tiny_model_dir):
    model, processor = load(tiny_model_dir)
    batch = processor([image()], ["find them"], phrases=[["red circle", "blue square"]])
    embeds, _, _ = model.embed_tokens(batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"])
    ids = batch["input_ids"][0]
    seg_positions = torch.nonzero(ids == model.config.seg_token_index).flatten()
    assert seg_positions.numel() == 2 * model.config.max_seg_nums
    bank = model.model.mask_queries
    for n, position in enumerate(seg_positions.tolist()):
        assert torch.equal(embeds[0, position], bank[n % 10])
    text = (ids != model.config.seg_token_index) & (ids != model.config.image_token_id)
    table = model.model.get_input_embeddings().weight
    assert torch.equal(embeds[0, text], table[ids[text]])


def test_queries_see_each_other_but_earlier_tokens_never_see_them(tiny_model_dir):
    model, processor = load(tiny_model_dir)
    batch = processor([image()], ["find them"], phrases=[["red circle"]])
    with torch.no_grad():
        before = model(**model_inputs(batch))
        model.model.mask_queries[9].add_(1.0)  # change only the last query of the block
        after = model(**model_inputs(batch))
    first_seg = int(torch.nonzero(batch["input_ids"][0] == model.config.seg_token_index)[0])
    # Nothing before the block moves; the first query moves although it comes before query 9.
    assert torch.equal(before.logits[0, :first_seg], after.logits[0, :first_seg])
    assert not torch.allclose(before.query_states[0, 0], after.query_states[0, 0])


def test_gradients_reach_bank_projectors_and_decoder_but_not_frozen_towers(tiny_model_dir):
    model, processor = load(tiny_model_dir)
    model.train()
    frozen = [model.model.visual, model.model.grounding_model.model.vision_encoder]
    for module in frozen:
        module.requires_grad_(False)
    batch = processor([image()], ["find them"], answers=[T.answer_for_phrases(["red circle"], 10)])
    out = model(**model_inputs(batch))
    target = torch.zeros_like(out.pred_masks)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.pred_masks, target) + out.pred_logits.sigmoid().mean()
    # SAM3's semantic map (one per phrase, on the mask grid) feeds the from-scratch semantic term.
    assert out.semantic_logits.shape == (1, *out.pred_masks.shape[-2:])
    loss = loss + out.semantic_logits.sigmoid().mean()
    loss.backward()
    backbone = model.model
    trained = {
        "bank": backbone.mask_queries,
        "query projector": backbone.mask_hidden_fcs[0][0].weight,
        "phrase projector": backbone.text_hidden_fcs[0][2].weight,
        "sam decoder": backbone.grounding_model.model.detr_decoder.layers[0].self_attn.q_proj.weight,
        "mask head": backbone.grounding_model.model.mask_decoder.instance_projection.weight,
        "semantic head": backbone.grounding_model.model.mask_decoder.semantic_projection.weight,
    }
    for name, parameter in trained.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for module in frozen:
        assert all(p.grad is None for p in module.parameters())


def test_labels_ignore_every_seg_and_the_token_after_it(tiny_model_dir):
    _, processor = load(tiny_model_dir)
    answer = T.answer_for_phrases(["red circle", "blue square"], 10)
    batch = processor([image()], ["find them"], answers=[answer])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    seg = processor.token_ids[T.SEG]
    mask_end = processor.token_ids[T.MASK_END]
    assert (labels[ids == seg] == IGNORE_INDEX).all()
    assert (labels[ids == mask_end] == IGNORE_INDEX).all()  # every <|mask_end|> follows a [SEG]
    trained = labels != IGNORE_INDEX
    answer_ids = processor.answer_ids(answer)
    expected = sum(1 for i, t in enumerate(answer_ids) if t != seg and not (i and answer_ids[i - 1] == seg))
    assert int(trained.sum()) == expected
    assert int(labels[-1]) == processor.token_ids[T.IM_END]


def forced_answer(processor, phrases):
    """The answer ids a model would emit itself: blocks are injected after each ref_end."""
    full = processor.answer_ids(T.answer_for_phrases(phrases, processor.num_queries))
    block = {processor.token_ids[T.MASK_START], processor.token_ids[T.SEG], processor.token_ids[T.MASK_END]}
    return [t for t in full if t not in block], full


def test_generation_and_single_forward_agree_when_forced_to_the_same_phrases(tiny_model_dir):
    model, processor = load(tiny_model_dir)
    predictor = Predictor(model, processor, threshold=0.0)
    picture, instruction, phrases = image(), "Which things are round?", ["red circle", "blue ring"]
    single = predictor.predict(picture, instruction, phrases=phrases)

    prompt = processor([picture], [instruction])
    forced, full = forced_answer(processor, phrases)
    result = generate_queries(
        model, prompt["input_ids"], prompt["pixel_values"], prompt["image_grid_thw"], prompt["mm_token_type_ids"],
        max_new_tokens=len(full), forced_ids=forced,
    )
    assert result.token_ids == full  # blocks were injected after each <|object_ref_end|>
    assert [processor.decode(p) for p in result.phrases] == phrases

    teacher = processor([picture], [instruction], phrases=[phrases])
    with torch.no_grad():
        states = model(**model_inputs(teacher), compute_logits=False).query_states
    torch.testing.assert_close(result.query_states, states, atol=2e-5, rtol=1e-4)

    ids, mask = model.sam3_prompt(result.phrases)
    logits, masks = predictor._detect(result.query_states, ids, mask, torch.zeros(2, dtype=torch.long),
                                      prompt["sam_pixel_values"], {})
    generated = predictor._instances(phrases, logits, masks, picture.shape[:2], 0.0)
    assert len(generated) == len(single.instances) == 20
    for a, b in zip(generated, single.instances):
        assert (a.phrase, a.query_index) == (b.phrase, b.query_index)
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert (a.mask != b.mask).mean() < 1e-3


def test_save_then_load_gives_identical_outputs(tiny_model_dir, tmp_path):
    model, processor = load(tiny_model_dir)
    model.save_pretrained(tmp_path)
    processor.tokenizer.save_pretrained(tmp_path)
    shutil.copy(tiny_model_dir / "preprocessor_config.json", tmp_path)
    reloaded = InstructSamForSegmentation.from_pretrained(tmp_path).eval()
    batch = processor([image()], ["x"], phrases=[["red circle"]])
    with torch.no_grad():
        a, b = model(**model_inputs(batch)), reloaded(**model_inputs(batch))
    for name in ("logits", "query_states", "pred_masks", "pred_logits"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def released_layout_copy(source, target, extra: dict | None = None, drop: tuple = ()):
    """Re-write a model directory the way the authors' release stores it: two safetensors
    shards plus an index, and SAM3 keys (text encoder, text projection, geometry encoder) that
    InstructSAM inference leaves unused."""
    state = load_file(source / "model.safetensors")
    state.update(extra or {})
    for key in drop:
        state.pop(key)
    target.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: state[k].contiguous() for k in shard_keys}, target / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard_keys})
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(source / name, target / name)
    shutil.copytree(source / "sam3", target / "sam3")
    return target


UNUSED_SAM3_KEYS = {
    "model.grounding_model.model.text_encoder.text_model.final_layer_norm.weight": torch.ones(32),
    "model.grounding_model.model.text_projection.weight": torch.zeros(32, 32),
    "model.grounding_model.model.geometry_encoder.label_embed.weight": torch.zeros(2, 32),
}


def test_released_key_layout_loads_without_conversion(tiny_model_dir, tmp_path):
    keys = load_file(tiny_model_dir / "model.safetensors").keys()
    assert all(k.startswith(RELEASED_PREFIXES) for k in keys)
    assert "model.mask_queries" in keys and "model.mask_hidden_fcs.0.2.weight" in keys
    released = released_layout_copy(tiny_model_dir, tmp_path / "released", extra=UNUSED_SAM3_KEYS)
    original = InstructSamForSegmentation.from_pretrained(tiny_model_dir).eval()
    loaded = InstructSamForSegmentation.from_pretrained(released).eval()
    processor = InstructSamProcessor.from_pretrained(released)
    batch = processor([image()], ["x"], phrases=[["blue square"]])
    with torch.no_grad():
        a, b = original(**model_inputs(batch)), loaded(**model_inputs(batch))
    assert torch.equal(a.pred_masks, b.pred_masks) and torch.equal(a.logits, b.logits)


def test_missing_and_unexpected_keys_are_errors_that_name_them(tiny_model_dir, tmp_path):
    missing = released_layout_copy(tiny_model_dir, tmp_path / "missing", drop=("model.text_hidden_fcs.0.0.weight",))
    with pytest.raises(CheckpointError, match=r"missing: model\.text_hidden_fcs\.0\.0\.weight"):
        InstructSamForSegmentation.from_pretrained(missing)
    extra = {"model.grounding_model.model.detr_decoder.bogus.weight": torch.zeros(3)}
    unexpected = released_layout_copy(tiny_model_dir, tmp_path / "unexpected", extra=extra)
    with pytest.raises(CheckpointError, match=r"unexpected: model\.grounding_model\.model\.detr_decoder\.bogus\.weight"):
        InstructSamForSegmentation.from_pretrained(unexpected)


@pytest.mark.parametrize("size", [(37, 91), (120, 48)])
def test_instances_come_back_at_the_input_resolution(tiny_model_dir, size):
    model, processor = load(tiny_model_dir)
    predictor = Predictor(model, processor, threshold=0.0, max_instances=7)
    prediction = predictor.predict(image(*size), "red circles")
    assert prediction.phrases == ["red circles"]  # a bare phrase takes the single-forward path
    assert len(prediction.instances) == 7
    height, width = size
    scores = [inst.score for inst in prediction.instances]
    assert scores == sorted(scores, reverse=True)
    for inst in prediction.instances:
        assert inst.mask.shape == size and inst.mask.dtype == bool
        x0, y0, x1, y1 = inst.box
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
        if inst.mask.any():
            ys, xs = np.nonzero(inst.mask)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_batch_gives_the_same_instances_as_one_by_one(tiny_model_dir):
    model, processor = load(tiny_model_dir)
    predictor = Predictor(model, processor, threshold=0.0, max_new_tokens=8)
    images = [image(64, 96, seed=1), image(100, 50, seed=2), image(80, 80, seed=3)]
    instructions = ["red circles", "Which one holds water?", "the blue square left of the star"]
    phrases = [None, None, ["blue square", "star"]]
    batched = predictor.predict_batch(images, instructions, phrases)
    for i in range(3):
        single = predictor.predict(images[i], instructions[i], phrases[i])
        assert batched[i].phrases == single.phrases
        assert len(batched[i].instances) == len(single.instances)
        for a, b in zip(batched[i].instances, single.instances):
            assert (a.phrase_index, a.query_index) == (b.phrase_index, b.query_index)
            assert a.score == pytest.approx(b.score, abs=1e-4)
            assert (a.mask != b.mask).mean() < 1e-3


def test_threshold_keeps_only_scores_above_it(tiny_model_dir):
    model, processor = load(tiny_model_dir)
    everything = Predictor(model, processor, threshold=0.0).predict(image(), "stars")
    cut = float(np.median([inst.score for inst in everything.instances]))
    kept = Predictor(model, processor, threshold=cut).predict(image(), "stars")
    assert [i.score for i in kept.instances] == [i.score for i in everything.instances if i.score > cut]


def test_mask_weighted_scores_follow_the_hand_computed_means():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    masks = torch.full((1, 3, 2, 2), -5.0)
    masks[0, 0] = torch.tensor([[3.0, 1.0], [-2.0, -4.0]])  # keeps two pixels
    masks[0, 1, 0, 0] = 0.5  # keeps one pixel; query 2 keeps none
    scores = instance_scores(logits, masks, "query_x_mask")
    probability = torch.sigmoid
    expected = [0.5 * (probability(torch.tensor(3.0)) + probability(torch.tensor(1.0))) / 2,
                probability(torch.tensor(2.0)) * probability(torch.tensor(0.5)), 0.0]
    assert scores[0].tolist() == pytest.approx([float(e) for e in expected], abs=1e-6)
    assert instance_scores(logits, masks, "query")[0].tolist() == pytest.approx(torch.sigmoid(logits)[0].tolist())
    with pytest.raises(UserError, match="instance_score"):
        instance_scores(logits, masks, "mask_only")


def test_predictor_applies_the_configs_instance_score_rule(tiny_model_dir):
    model, processor = load(tiny_model_dir)
    plain = Predictor(model, processor, threshold=0.0).predict(image(), "stars")
    model.config.instance_score = "query_x_mask"
    weighted = Predictor(model, processor, threshold=0.0).predict(image(), "stars")
    by_query = {inst.query_index: inst for inst in plain.instances}
    assert len(weighted.instances) == len(plain.instances) == 10
    for inst in weighted.instances:
        before = by_query[inst.query_index]
        # Never above the query score; exactly 0 when the mask is empty.
        assert inst.score <= before.score + 1e-6
        if not inst.mask.any():
            assert inst.score == 0.0
    assert [i.score for i in weighted.instances] != [i.score for i in plain.instances]


def test_presence_scales_every_query_of_its_phrase():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    masks = torch.ones(2, 2, 3, 3)
    presence = torch.tensor([0.0, math.log(3.0)])  # sigmoid: 0.5 and 0.75
    scores = instance_scores(logits, masks, "query", presence)
    expected = torch.sigmoid(logits) * torch.tensor([[0.5], [0.75]])
    assert torch.allclose(scores, expected)


def test_semantic_x_mask_scores_follow_the_hand_computed_means():
    # One phrase, 2x2 grid. Query 0 keeps pixels (0,0) and (0,1), query 1 keeps (1,1), query 2
    # nothing. Semantic probabilities 0.9, 0.5 / 0.2, 0.1 (row-major).
    masks = torch.full((1, 3, 2, 2), -4.0)
    masks[0, 0, 0] = torch.tensor([2.0, 1.0])
    masks[0, 1, 1, 1] = 3.0
    semantic = torch.logit(torch.tensor([[[0.9, 0.5], [0.2, 0.1]]]))
    logits = torch.tensor([[-9.0, 9.0, 9.0]])  # ignored by this rule, as is presence
    presence = torch.tensor([-9.0])
    scores = instance_scores(logits, masks, "semantic_x_mask", presence, semantic_logits=semantic)
    p = torch.sigmoid
    expected = [(0.9 + 0.5) / 2 * float(p(torch.tensor(2.0)) + p(torch.tensor(1.0))) / 2,
                0.1 * float(p(torch.tensor(3.0))), 0.0]
    assert scores[0].tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(UserError, match="semantic logits"):
        instance_scores(logits, masks, "semantic_x_mask")


def test_mask_nms_zeroes_duplicates_and_fragments_of_better_queries_only():
    # Phrase 0: queries 0 and 1 cover the same 2x2 block, query 2 its left column (2 pixels),
    # query 3 a disjoint block. Phrase 1: query 1 repeats query 0, and phrase 0 must not
    # influence it. Phrase 2: query 1 is a 2-pixel fragment inside query 0's 4x4 mask (IoU 1/8).
    masks = torch.full((3, 4, 4, 4), -3.0)
    masks[0, 0, :2, :2] = 2.0
    masks[0, 1, :2, :2] = 2.0
    masks[0, 2, :2, :1] = 2.0
    masks[0, 3, 2:, 2:] = 2.0
    masks[1, 0, :2, :2] = 2.0
    masks[1, 1, :2, :2] = 2.0
    masks[2, 0] = 2.0
    masks[2, 1, 0, :2] = 2.0
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5], [0.0, -1.0, 0.0, 0.0], [1.0, 0.0, -9.0, -9.0]])
    plain = instance_scores(logits, masks, "query")
    strict = instance_scores(logits, masks, "query", nms_overlap=0.4)
    # Phrase 0 in score order: q2 kept; q1 has 2 of 4 pixels inside q2 (0.5 > 0.4): dropped; q0
    # likewise (a dropped query suppresses nothing); q3 is disjoint: kept.
    assert strict[0].tolist() == pytest.approx([0.0, 0.0, float(plain[0, 2]), float(plain[0, 3])])
    assert strict[1].tolist() == pytest.approx([float(plain[1, 0]), 0.0, float(plain[1, 2]), float(plain[1, 3])])
    # The fragment lies wholly inside the better mask: dropped although its IoU is 1/8. The
    # empty masks of q2 and q3 lie inside nothing and are kept.
    assert strict[2].tolist() == pytest.approx([float(plain[2, 0]), 0.0, float(plain[2, 2]), float(plain[2, 3])])
    loose = instance_scores(logits, masks, "query", nms_overlap=0.6)
    # At 0.6 q1 stays (half inside q2), and q0, wholly inside q1, goes.
    assert loose[0].tolist() == pytest.approx([0.0, float(plain[0, 1]), float(plain[0, 2]), float(plain[0, 3])])
    with pytest.raises(ValueError, match="mask_nms_overlap"):
        InstructSamConfig(mask_nms_overlap=1.5)


def test_predictor_applies_the_configs_mask_nms(tiny_model_dir):
    model, processor = load(tiny_model_dir)
    plain = Predictor(model, processor, threshold=0.0).predict(image(), "stars")
    model.config.mask_nms_overlap = 0.5
    deduplicated = Predictor(model, processor, threshold=0.0).predict(image(), "stars")
    kept = [i for i in deduplicated.instances if i.score > 0]  # sorted by score, best first
    assert 0 < len(kept) < len(plain.instances)
    for later in range(1, len(kept)):
        for better in range(later):
            inside = np.logical_and(kept[later].mask, kept[better].mask).sum() / max(1, kept[later].mask.sum())
            assert inside <= 0.6  # NMS compares the logit grid, this the upsampled masks


def test_presence_head_option_builds_saves_and_loads_sam3s_head(tmp_path):
    from instructsam_core.configuration import InstructSamConfig
    from instructsam_core.tiny import write_tiny_model

    plain = write_tiny_model(tmp_path / "plain", seed=0)
    with_head = tmp_path / "with"
    shutil.copytree(plain, with_head)
    config = InstructSamConfig.from_pretrained(plain)
    config.presence_token = config.presence_head = True
    torch.manual_seed(0)
    InstructSamForSegmentation(config).save_pretrained(with_head)
    weights = load_file(str(with_head / "model.safetensors"))
    head_keys = [k for k in weights if ".detr_decoder.presence_" in k]
    assert any(k.endswith("presence_token.weight") for k in head_keys)
    assert any(".presence_head." in k for k in head_keys) and any(".presence_layer_norm." in k for k in head_keys)
    model, processor = load(with_head)
    batch = processor([image()], ["red circles, stars"], phrases=[["red circles", "stars"]])
    sam = batch.pop("sam_pixel_values")
    with torch.no_grad():
        out = model(**model_inputs(batch), sam_pixel_values=sam, compute_logits=False)
    assert out.presence_logits.shape == (2,) and bool(out.presence_logits.abs().le(10.0).all())
    # Instance scores = query score x sigmoid(presence) for every query of the phrase.
    predictor = Predictor(model, processor, threshold=0.0)
    prediction = predictor.predict(image(), "red circles, stars", phrases=["red circles", "stars"])
    probabilities = torch.sigmoid(out.pred_logits) * torch.sigmoid(out.presence_logits)[:, None]
    for inst in prediction.instances:
        assert inst.score == pytest.approx(float(probabilities[inst.phrase_index, inst.query_index]), abs=1e-5)
    # A checkpoint without the head's weights cannot silently load into a model that has one.
    broken = tmp_path / "broken"
    shutil.copytree(with_head, broken)
    save_file({k: v for k, v in weights.items() if ".presence_head." not in k}, str(broken / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing: .*presence_head"):
        InstructSamForSegmentation.from_pretrained(broken)
    # Nor can a checkpoint trained with the token run as the release's decoder (without it): the
    # extra keys are an error, not silently dropped.
    release_layout = tmp_path / "release_layout"
    shutil.copytree(plain, release_layout)
    extra = load_file(str(plain / "model.safetensors"))
    extra.update({k: weights[k] for k in head_keys})
    save_file(extra, str(release_layout / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="unexpected: .*presence_"):
        InstructSamForSegmentation.from_pretrained(release_layout)
    with pytest.raises(CheckpointError, match="presence_head needs presence_token"):
        InstructSamConfig.from_pretrained(plain, presence_head=True)


def test_unknown_instance_score_rule_is_a_config_error(tiny_model_dir, tmp_path):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["instance_score"] = "mask_only"
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="instance_score must be one of"):
        InstructSamForSegmentation.from_pretrained(tmp_path / "m")


def test_config_without_token_ids_takes_them_from_the_tokenizer(tiny_model_dir, tmp_path):
    """A Qwen3-VL-style config.json without InstructSAM's token ids still loads and predicts."""
    target = released_layout_copy(tiny_model_dir, tmp_path / "plain_config")
    config = json.loads((target / "config.json").read_text())
    for name in ("seg_token_index", "seg_start_token_index", "seg_end_token_index", "ref_start_token_index",
                 "ref_end_token_index", "region_token_index"):
        config.pop(name)
    (target / "config.json").write_text(json.dumps(config))
    predictor = Predictor.from_pretrained(target, threshold=0.0)
    assert predictor.model.config.seg_token_index == predictor.processor.tokenizer.convert_tokens_to_ids(T.SEG)
    assert predictor.model.config.region_token_index == predictor.processor.tokenizer.convert_tokens_to_ids(T.REGION)
    reference = Predictor.from_pretrained(tiny_model_dir, threshold=0.0)
    a, b = predictor.predict(image(), "red circles"), reference.predict(image(), "red circles")
    assert [i.score for i in a.instances] == [i.score for i in b.instances]


@pytest.mark.parametrize("field", ["seg_token_index", "seg_start_token_index", "region_token_index"])
def test_config_token_ids_that_contradict_the_tokenizer_are_an_error(tiny_model_dir, tmp_path, field):
    target = released_layout_copy(tiny_model_dir, tmp_path / "bad_ids")
    config = json.loads((target / "config.json").read_text())
    config[field] = config["seg_end_token_index"] if field != "seg_end_token_index" else config["seg_token_index"]
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=field):
        Predictor.from_pretrained(target)
