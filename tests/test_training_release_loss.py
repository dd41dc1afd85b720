"""The release's matching, loss terms, training forward and recipe, checked by hand.

Expected values are computed here from the facts (reference-design.md, "The released training as
written"): Hungarian cost 0.5 Dice (eps 1e-3) + 2 mean pixel BCE + softplus(-score); mask BCE and
Dice (eps 1) averaged over matched pairs; score BCE over all queries with a matched query's target
max(soft Dice (eps 1e-6), 0.1); the mask and score terms only for samples with a mask target.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from instructsam_core.training.collate import TrainingCollator
from instructsam_core.training.criterion import SetCriterion
from instructsam_core.training.dataset import InstructSegDataset, TargetOptions
from instructsam_core.training.matcher import HungarianMatcher
from instructsam_core.training.point_sampling import point_sample
from instructsam_core.training.records import read_records

H, W, GRID = 64, 96, 32
RECORDS = [
    {"image": "a.png", "height": H, "width": W, "type": "instseg", "annotation": [
        # an uncompressed RLE: no zeros, then every pixel set
        {"type": "phrase", "text": "sky", "ann_type": "mask", "ann": [json.dumps({"size": [H, W], "counts": [0, H * W]})]},
        {"type": "phrase", "text": "unicorn", "ann_type": "mask", "ann": None}]},
    {"image": "a.png", "height": H, "width": W, "annotation": [
        {"type": "phrase", "text": "dragon", "ann_type": "mask", "ann": None},
        {"type": "phrase", "text": "ghost", "ann_type": "mask", "ann": None}]},
    {"image": "a.png", "height": H, "width": W, "annotation": [
        {"type": "phrase", "text": "car", "ann_type": "bbox", "ann": [json.dumps([5, 3, 20, 10])]}]},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("release_loss")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "a.png")
    (root / "train.json").write_text(json.dumps(RECORDS))
    records, _ = read_records(root / "train.json", root)
    return InstructSegDataset(records, GRID, seed=0)


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_dir):
    from instructsam_core.modeling import InstructSamForSegmentation
    from instructsam_core.processing import InstructSamProcessor

    model = InstructSamForSegmentation.from_pretrained(tiny_model_dir).eval()
    return model, InstructSamProcessor.from_pretrained(tiny_model_dir, model.config)


def _by_phrase(item) -> dict[str, np.ndarray]:
    phrases = [p for _, turn in item["turns"] for p in turn]
    return dict(zip(phrases, item["masks"]))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def _cost(logits: np.ndarray, score: float, target: np.ndarray) -> float:
    """0.5 Dice (eps 1e-3) + 2 mean pixel BCE + softplus(-score), one query against one instance."""
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    t = target.astype(np.float64)
    dice = 1.0 - (2.0 * (p * t).sum() + 1e-3) / (p.sum() + t.sum() + 1e-3)
    x = logits.astype(np.float64)
    bce = np.mean(t * np.log1p(np.exp(-x)) + (1 - t) * np.log1p(np.exp(x)))
    return 0.5 * dice + 2.0 * bce + _softplus(-score)


def test_matcher_costs_by_hand(data):
    targets = _by_phrase(data.load((0, 0)))
    torch.manual_seed(0)
    logits = torch.randn(10, GRID, GRID) * 3.0
    scores = torch.randn(10)
    for phrase in ("sky", "unicorn"):
        gt = torch.from_numpy(targets[phrase]).float()
        got = HungarianMatcher().cost_matrix(logits, scores, gt).numpy()
        expected = np.array([[_cost(logits[q].numpy(), float(scores[q]), targets[phrase][g]) for g in range(len(gt))]
                             for q in range(10)])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # the placeholder of the no-target phrase is an instance like any other: one query takes it
    match = HungarianMatcher()(logits[None], scores[None], [torch.from_numpy(targets["unicorn"]).float()])
    assert len(match.query_indices[0]) == 1


def _expected_terms(constants: np.ndarray, scores: np.ndarray, fills: list[float | None], points: int):
    """Mask BCE/Dice and score BCE for mask logits constant per query and targets all-ones (1.0),
    all-zero placeholders (0.0) or absent (None), by the release's formulas."""
    n = GRID * GRID
    bces, dices, score_terms = [], [], []
    for phrase, fill in enumerate(fills):
        targets = np.zeros(10)
        if fill is not None:
            costs = [_cost(np.full((GRID, GRID), constants[phrase, q]), scores[phrase, q], np.full((GRID, GRID), fill))
                     for q in range(10)]
            q = int(np.argmin(costs))
            prob = 1.0 / (1.0 + math.exp(-constants[phrase, q]))
            bces.append(_softplus(-constants[phrase, q]) if fill else _softplus(constants[phrase, q]))
            dices.append(1.0 - (2 * points * prob * fill + 1.0) / (points * prob + points * fill + 1.0))
            targets[q] = max((2 * n * prob * fill + 1e-6) / (n * prob + n * fill + 1e-6), 0.1)
        for q in range(10):
            x, y = scores[phrase, q], targets[q]
            score_terms.append(y * _softplus(-x) + (1 - y) * _softplus(x))
    mean = (lambda v: sum(v) / len(v)) if bces else (lambda v: 0.0)
    return mean(bces), mean(dices), sum(score_terms) / len(score_terms)


@pytest.mark.parametrize("option", ["placeholder", "unmatched"])
def test_loss_terms_by_hand(data, option):
    dataset = InstructSegDataset(data.records, GRID, targets=TargetOptions(no_target_phrase=option), seed=0)
    targets = _by_phrase(dataset.load((0, 0)))
    masks = [torch.from_numpy(targets["sky"]), torch.from_numpy(targets["unicorn"])]
    rng = np.random.default_rng(4)
    constants = rng.normal(0.0, 2.0, (2, 10))
    scores = rng.normal(0.0, 1.0, (2, 10))
    mask_logits = torch.tensor(constants, dtype=torch.float32)[:, :, None, None].expand(2, 10, GRID, GRID).contiguous()
    # nearest point reading keeps a constant mask constant at every point (bilinear reads zero padding
    # within half a cell of the border); the terms do not depend on where the points fall
    criterion = SetCriterion(num_points=500, point_mode="nearest")
    out = criterion(mask_logits, torch.tensor(scores, dtype=torch.float32), masks,
                    generator=torch.Generator().manual_seed(0))
    fills = [1.0, 0.0 if option == "placeholder" else None]
    bce, dice, score = _expected_terms(constants, scores, fills, 500)
    assert out["mask_bce"].item() == pytest.approx(bce, rel=1e-4)
    assert out["mask_dice"].item() == pytest.approx(dice, rel=1e-4, abs=1e-6)
    assert out["score"].item() == pytest.approx(score, rel=1e-4)
    assert out["loss"].item() == pytest.approx(4.0 * bce + 0.25 * dice + score, rel=1e-4)


def test_bilinear_point_sampling_by_hand():
    grid = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    # (x, y) = (0.5, 0.5) is the image centre: the mean of the four cells
    assert point_sample(grid, torch.tensor([[[0.5, 0.5]]])).item() == pytest.approx(1.5)
    # (0.375, 0.25): pixel coordinates (0.25, 0.0) -> row 0 between 0 and 1 at 0.25
    assert point_sample(grid, torch.tensor([[[0.375, 0.25]]])).item() == pytest.approx(0.25)
    assert SetCriterion().point_mode == "bilinear" and HungarianMatcher().dice_smooth == 1e-3


def _forward(model, processor, items):
    batch = TrainingCollator(processor)(items)
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw", "sam_pixel_values",
            "phrase_ids", "phrase_mask")
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k in keys})
    return batch, out


def _text_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    losses = [F.cross_entropy(logits[b, t][None].double(), labels[b, t + 1][None]).item()
              for b in range(labels.shape[0]) for t in range(labels.shape[1] - 1) if labels[b, t + 1] != -100]
    return sum(losses) / len(losses)


def test_samples_without_a_mask_target_train_the_text_alone(data, model_and_processor):
    model, processor = model_and_processor
    items = [data.load((1, 0)), data.load((2, 0))]  # all-null, bbox
    batch, out = _forward(model, processor, items)
    assert not batch["trains_masks"].any()
    losses = SetCriterion(num_points=64)(out.pred_masks, out.pred_logits, batch["targets"], out.logits, batch["labels"],
                                         generator=torch.Generator().manual_seed(0), active=batch["trains_masks"])
    text = _text_ce(out.logits, batch["labels"])
    assert losses["text"].item() == pytest.approx(text, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(text, rel=1e-5)
    assert losses["mask_bce"].item() == losses["mask_dice"].item() == losses["score"].item() == 0.0
    # beside a sample with a target, their phrases take no part in the mask and score terms
    mixed_items = [data.load((0, 0)), items[0]]
    mixed, out = _forward(model, processor, mixed_items)
    assert mixed["trains_masks"].tolist() == [True, True, False, False]
    both = SetCriterion(num_points=64)(out.pred_masks, out.pred_logits, mixed["targets"], active=mixed["trains_masks"],
                                       generator=torch.Generator().manual_seed(0))
    alone = SetCriterion(num_points=64)(out.pred_masks[:2], out.pred_logits[:2], mixed["targets"][:2],
                                        generator=torch.Generator().manual_seed(0))
    for key in ("mask_bce", "mask_dice", "score"):
        assert both[key].item() == pytest.approx(alone[key].item(), rel=1e-6), key


def test_training_forward_prompts_sam3_with_the_bare_phrase(data, model_and_processor):
    model, processor = model_and_processor
    item = data.load((0, 0))
    phrases = [p for _, turn in item["turns"] for p in turn]
    bare = [processor.tokenizer(p, add_special_tokens=False)["input_ids"] for p in phrases]
    _, out = _forward(model, processor, [item])
    for row, ids in enumerate(bare):
        assert out.phrase_ids[row][: len(ids)].tolist() == ids and int(out.phrase_mask[row].sum()) == len(ids)
    # inference (no prompts given) keeps the release's markers for a release-configured model
    vocab = processor.tokenizer.get_vocab()
    batch = TrainingCollator(processor, bare_phrase_prompt=False)([item])
    assert "phrase_ids" not in batch
    with torch.no_grad():
        marked = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids",
                                                                   "pixel_values", "image_grid_thw")})
    for row, ids in enumerate(bare):
        expected = [vocab["<|object_ref_start|>"], *ids, vocab["<|object_ref_end|>"]]
        assert marked.phrase_ids[row][: len(expected)].tolist() == expected


STAGE1 = yaml.safe_load((Path(__file__).resolve().parents[1] / "training" / "stage1.yaml").read_text())


def _release_trainable(name: str) -> bool:
    """instructsam/train.py: LoRA weights; lm_head, embed_tokens, both projectors, the query bank;
    visual.merger; SAM3 (grounding_model.model) but its vision encoder."""
    if "lora_" in name:
        return True
    if any(key in name for key in ("lm_head", "embed_tokens", "text_hidden_fcs", "mask_hidden_fcs", "mask_queries")):
        return True
    if "visual.merger." in name:
        return True
    return "grounding_model.model." in name and "grounding_model.model.vision_encoder" not in name


def _release_lr(name: str) -> float:
    """instructsam/training/trainer.py create_optimizer, stage 1 learning rates."""
    if "merger" in name:
        return 5e-6
    if any(key in name for key in ("grounding_model", "text_hidden_fcs", "mask_hidden_fcs", "mask_queries")):
        return 1e-5
    return 5e-6


def test_stage1_recipe_trains_the_release_set_at_its_learning_rates(tiny_model_dir):
    from instructsam_core.modeling import InstructSamForSegmentation
    from instructsam_core.training import model_setup

    model = InstructSamForSegmentation.from_pretrained(tiny_model_dir)
    model = model_setup.apply_lora(model, {**STAGE1["trainable"]["lora"], "r": 4})
    model_setup.set_trainable(model, STAGE1["trainable"]["train"], STAGE1["trainable"]["freeze"])
    names = {name: param.requires_grad for name, param in model.named_parameters()}
    wrong = [n for n, trains in names.items() if trains != _release_trainable(n)]
    assert not wrong, wrong[:5]
    lora = [n for n in names if "lora_A" in n]
    layers = model.config.text_config.num_hidden_layers
    assert len(lora) == 4 * layers and all(".language_model.layers." in n and ".self_attn." in n for n in lora)
    assert not any(names[n] for n in names if "deepstack_merger" in n or ".visual.blocks." in n)
    groups, group_names = model_setup.parameter_groups(model, STAGE1["optimizer"]["lr_groups"], 0.0)
    seen = 0
    for group, members in zip(groups, group_names):
        for name in members:
            assert group["lr"] == _release_lr(name), name
            seen += 1
    assert seen == sum(names.values())
    assert [g["group_name"] for g in groups] == ["projector", "sam_decoder", "llm"]


@pytest.mark.parametrize("accumulation, factor", [("sum", 2.0), ("mean", 1.0)])
def test_accumulated_losses_are_summed_like_the_hf_trainer(tmp_path, monkeypatch, accumulation, factor):
    from accelerate import Accelerator

    from instructsam_core.synth import generate
    from instructsam_core.training import trainer as trainer_module
    from instructsam_core.training.recipe import parse_recipe

    generate(tmp_path / "data", 2, seed=3, split="train", progress=False)
    seen: dict[str, list[float]] = {"criterion": [], "backward": []}
    criterion_call = trainer_module.SetCriterion.__call__

    def recording_criterion(self, *args, **kwargs):
        out = criterion_call(self, *args, **kwargs)
        seen["criterion"].append(float(out["loss"]))
        return out

    def recording_backward(self, loss, **kwargs):
        seen["backward"].append(float(loss))

    monkeypatch.setattr(trainer_module.SetCriterion, "__call__", recording_criterion)
    monkeypatch.setattr(Accelerator, "backward", recording_backward)
    recipe = parse_recipe({"model": {"init": "scratch"}, "data": {"mixture": [{"path": "train.json"}], "num_workers": 0},
                           "schedule": {"max_steps": 1}, "batch": {"grad_accum": 2, "accumulation": accumulation},
                           "loss": {"num_points": 32}, "threads": 1})
    trainer_module.Trainer(recipe, tmp_path / "data", tmp_path / "run", progress=False).run()
    assert len(seen["criterion"]) == 2
    assert seen["backward"] == pytest.approx([factor * value for value in seen["criterion"]], rel=1e-6)
