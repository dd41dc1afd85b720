"""The region head (region_head.py): crop geometry, what it is given and not given, and that it
learns to tell shapes apart that a coarse mask grid cannot."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from instructsam_core.configuration import InstructSamConfig
from instructsam_core.errors import UserError
from instructsam_core.modeling import InstructSamForSegmentation
from instructsam_core.predictor import Predictor, instance_scores
from instructsam_core.processing import InstructSamProcessor
from instructsam_core.region_head import (
    CLEARED_LOGIT, CROP_MARGIN, RegionScoreHead, connected_regions, crop_regions, split_regions, square_boxes,
)
from instructsam_core.synth.scenes import _shape_mask
from instructsam_core.training.criterion import LossWeights, SetCriterion


def test_square_boxes_square_the_tight_box_and_pad_it():
    logits = torch.full((2, 48, 48), -3.0)
    logits[0, 4:9, 10:21] = 2.0  # rows 4..8, columns 10..20: 11 wide, 5 high
    boxes = square_boxes(logits)
    side = 11 / 48 * (1 + 2 * CROP_MARGIN)
    assert boxes[0].tolist() == pytest.approx([(10 + 21) / 2 / 48, (4 + 9) / 2 / 48, side])
    # An empty mask is judged on the whole image.
    assert boxes[1].tolist() == pytest.approx([0.5, 0.5, 1.0])


def test_crops_read_the_boxed_pixels_and_mask():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    masks = torch.randn(2, 2, 8, 8)
    # Per image: query 0 the whole image, query 1 the top-left quadrant.
    boxes = torch.tensor([[0.5, 0.5, 1.0], [0.25, 0.25, 0.5]]).expand(2, 2, 3)
    crops = crop_regions(images, masks, boxes, size=8)
    assert crops.shape == (2, 2, 4, 8, 8)
    # The whole image at its own size is the image itself, and the mask channel its probabilities.
    for p in range(2):
        assert torch.allclose(crops[p, 0, :3], images[p], atol=1e-4)
        assert torch.allclose(crops[p, 0, 3], masks[p, 0].sigmoid(), atol=1e-5)
    # The top-left quadrant at half the size: pixel centres fall on the quadrant's pixels.
    quadrant = crop_regions(images, masks, boxes, size=4)
    for p in range(2):
        assert torch.allclose(quadrant[p, 1, :3], images[p, :, :4, :4], atol=1e-4)
        assert torch.allclose(quadrant[p, 1, 3], masks[p, 1, :4, :4].sigmoid(), atol=1e-5)


def test_the_head_changes_none_of_its_inputs_and_ignores_padding_tokens():
    torch.manual_seed(0)
    head = RegionScoreHead(phrase_dim=16, dim=16)
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    masks = torch.randn(2, 3, 8, 8, requires_grad=True)
    phrases = torch.randn(2, 4, 16, requires_grad=True)
    phrase_mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    logits = head(images, masks, phrases, phrase_mask)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    # Every input enters detached: the head judges masks and reads phrases, it trains neither.
    assert images.grad is None and masks.grad is None and phrases.grad is None
    assert all(p.grad is not None for p in head.parameters())
    changed = phrases.detach().clone()
    changed[~phrase_mask] = 100.0
    assert torch.allclose(head(images, masks, changed, phrase_mask), logits.detach(), atol=1e-6)
    # Each phrase's own tokens matter.
    swapped = phrases.detach().flip(0)
    assert not torch.allclose(head(images, masks, swapped, phrase_mask.flip(0)), logits.detach())


def _shape_batch(rng: np.random.Generator, n: int):
    """n 48x48 images of one circle or square (same colour, 10-18 px across) with the object's
    mask on a 12x12 logit grid - too coarse to show the shape - and which shape it is."""
    images, masks, labels = [], [], []
    for _ in range(n):
        label = int(rng.integers(2))
        size = float(rng.uniform(5.0, 9.0))
        cx, cy = rng.uniform(12.0, 36.0, size=2)
        shape = _shape_mask(("circle", "square")[label], cx, cy, size, 48, 48)
        image = np.where(shape[None], 1.0, -1.0) + rng.normal(0.0, 0.1, size=(3, 48, 48))
        coarse = F.avg_pool2d(torch.from_numpy(shape[None].astype(np.float32)), 4)[0]
        images.append(torch.from_numpy(image).float())
        masks.append(torch.where(coarse > 0.3, 4.0, -4.0))
        labels.append(label)
    return torch.stack(images), torch.stack(masks)[:, None], torch.tensor(labels)


def test_the_head_learns_shapes_from_the_pixels():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    head = RegionScoreHead(phrase_dim=32, dim=32)
    phrases = torch.randn(2, 1, 32)  # "circles", "squares": one token each
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    ones = torch.ones(2, 1, dtype=torch.bool)

    def logits_of(images, masks):
        # Every image is asked both phrases: rows [image i, phrase k].
        n = images.shape[0]
        return head(images.repeat_interleave(2, 0), masks.repeat_interleave(2, 0),
                    phrases.repeat(n, 1, 1), ones.repeat(n, 1)).view(n, 2)

    for _ in range(150):
        images, masks, labels = _shape_batch(rng, 32)
        loss = F.binary_cross_entropy_with_logits(logits_of(images, masks), F.one_hot(labels, 2).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, masks, labels = _shape_batch(np.random.default_rng(1), 128)
    with torch.no_grad():
        accuracy = float((logits_of(images, masks).argmax(1) == labels).float().mean())
    # The 12x12 masks of these objects are 2x2-5x5 blobs: the shape is only in the pixels.
    assert accuracy >= 0.9


def test_region_term_trains_towards_the_score_targets():
    # One phrase without target: every region logit is pushed down; BCE of logits 0 is ln 2.
    criterion = SetCriterion(LossWeights(region=1.0), score_target="mask_iou")
    masks = torch.zeros(1, 3, 4, 4)
    region = torch.zeros(1, 3, requires_grad=True)
    losses = criterion(masks, torch.zeros(1, 3), [torch.zeros(0, 4, 4)], region_logits=region)
    assert float(losses["region"].detach()) == pytest.approx(math.log(2.0))
    losses["loss"].backward()
    assert bool((region.grad > 0).all())
    # A query whose mask is the instance has target 1, the others 0.
    masks = torch.full((1, 2, 4, 4), -5.0)
    masks[0, 0, :2, :2] = 5.0
    target = torch.zeros(1, 4, 4)
    target[0, :2, :2] = 1.0
    region = torch.tensor([[3.0, -3.0]])
    losses = criterion(masks, torch.zeros(1, 2), [target], region_logits=region)
    expected = -math.log(torch.sigmoid(torch.tensor(3.0)).item())
    assert float(losses["region"]) == pytest.approx(expected, rel=1e-5)


def test_region_rule_multiplies_the_semantic_score_by_the_region_probability():
    masks = torch.full((1, 2, 2, 2), -4.0)
    masks[0, 0, 0] = 2.0
    masks[0, 1] = 3.0
    semantic = torch.logit(torch.tensor([[[0.9, 0.5], [0.2, 0.1]]]))
    logits = torch.zeros(1, 2)
    region = torch.tensor([[0.0, math.log(3.0)]])  # sigmoid 0.5 and 0.75
    plain = instance_scores(logits, masks, "semantic_x_mask", semantic_logits=semantic)
    scores = instance_scores(logits, masks, "semantic_x_mask_x_region", semantic_logits=semantic,
                             region_logits=region)
    assert scores[0].tolist() == pytest.approx([float(plain[0, 0]) * 0.5, float(plain[0, 1]) * 0.75], abs=1e-6)
    with pytest.raises(UserError, match="region head"):
        instance_scores(logits, masks, "semantic_x_mask_x_region", semantic_logits=semantic)
    with pytest.raises(ValueError, match="region_head"):
        InstructSamConfig(instance_score="semantic_x_mask_x_region")


def test_region_head_option_saves_loads_and_scores_predictions(tiny_model_dir, tmp_path):
    config = InstructSamConfig.from_pretrained(tiny_model_dir)
    config.region_head = True
    config.instance_score = "semantic_x_mask_x_region"
    with_head = tmp_path / "with"
    shutil.copytree(tiny_model_dir, with_head)
    torch.manual_seed(0)
    InstructSamForSegmentation(config).save_pretrained(with_head)
    assert any(".region_head." in k for k in load_file(str(with_head / "model.safetensors")))
    model = InstructSamForSegmentation.from_pretrained(with_head).eval()
    processor = InstructSamProcessor.from_pretrained(with_head, model.config)
    picture = np.random.default_rng(0).integers(0, 256, (72, 104, 3), dtype=np.uint8)
    batch = processor([picture], ["red circles"], phrases=[["red circles"]])
    sam = batch.pop("sam_pixel_values")
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_sizes")}
    with torch.no_grad():
        out = model(**inputs, sam_pixel_values=sam, compute_logits=False)
        with pytest.raises(ValueError, match="pixel_values"):
            model.detect(out.query_states, out.phrase_ids, out.phrase_mask, model.encode_sam_images(sam),
                         out.phrase_row)
    assert out.region_logits.shape == (1, config.max_seg_nums)
    head = model.model.region_head
    # torch's default init (not the model's 0.02-std normal one), also after loading.
    assert float(head.encoder[0].weight.std()) > 0.05
    expected = instance_scores(out.pred_logits, out.pred_masks, "semantic_x_mask_x_region",
                               semantic_logits=out.semantic_logits, region_logits=out.region_logits)
    prediction = Predictor(model, processor, threshold=0.0).predict(picture, "red circles", phrases=["red circles"])
    assert prediction.instances
    for inst in prediction.instances:
        assert inst.score == pytest.approx(float(expected[inst.phrase_index, inst.query_index]), abs=1e-5)


def test_connected_regions_label_each_8_connected_region_of_each_mask_apart():
    inside = torch.zeros(2, 8, 8, dtype=torch.bool)
    inside[0, 1:3, 1:3] = True
    inside[0, 3, 3] = True  # touches the block above only at a corner: the same region
    inside[0, 6, 0:4] = True  # a second region
    inside[1, 6, 0:4] = True  # the same pixels in the next mask: a region of that mask only
    labels = connected_regions(inside)
    assert labels.dtype == torch.int64 and bool(((labels > 0) == inside).all())
    first = labels[0][inside[0]].unique()
    assert len(first) == 2 and int(labels[0, 1, 1]) == int(labels[0, 3, 3]) != int(labels[0, 6, 0])
    assert set(labels[1][inside[1]].unique().tolist()).isdisjoint(first.tolist())


def test_split_regions_clears_the_other_regions_largest_first_and_leaves_borders_alone():
    logits = torch.full((2, 12, 12), -1.5)
    logits[0, 1:6, 1:6] = 3.0  # region A: 25 pixels
    logits[0, 9:11, 8:10] = 3.0  # region B: 4 pixels
    candidates, valid = split_regions(logits, max_regions=3)
    assert candidates.shape == (2, 3, 12, 12)
    assert valid.tolist() == [[True, True, False], [True, False, False]]
    a, b = candidates[0, 0], candidates[0, 1]
    # Candidate 0 is the region of largest mass, A: B's pixels are cleared, nothing else changes.
    assert bool((a[1:6, 1:6] == 3.0).all()) and bool((a[9:11, 8:10] == CLEARED_LOGIT).all())
    assert bool((b[9:11, 8:10] == 3.0).all()) and bool((b[1:6, 1:6] == CLEARED_LOGIT).all())
    untouched = logits[0] <= 0
    assert torch.equal(a[untouched], logits[0][untouched]) and torch.equal(b[untouched], logits[0][untouched])
    # An empty mask is its own (only) candidate.
    assert torch.equal(candidates[1, 0], logits[1])


def test_judge_regions_judges_every_region_alone_and_keeps_the_best():
    torch.manual_seed(0)
    head = RegionScoreHead(phrase_dim=16, dim=16).eval()
    images = torch.randn(1, 3, 48, 48)
    phrases, phrase_mask = torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool)
    masks = torch.full((1, 3, 12, 12), -2.0)
    masks[0, 0, 1:5, 1:5] = 4.0  # query 0: two regions far apart
    masks[0, 0, 8:11, 7:11] = 4.0
    masks[0, 1, 2:7, 3:8] = 2.0  # query 1: one region
    # query 2: empty
    with torch.no_grad():
        logits, kept = head.judge_regions(images, masks, phrases, phrase_mask)
        alone = torch.full((1, 2, 12, 12), -2.0)
        alone[0, 0, 1:5, 1:5] = 4.0
        alone[0, 1, 8:11, 7:11] = 4.0
        each = head(images, alone, phrases, phrase_mask)[0]
        whole = head(images, masks, phrases, phrase_mask)[0]
    best = int(each.argmax())
    # Query 0's verdict is that of its better region judged alone, not of the box around both.
    assert float(logits[0, 0]) == pytest.approx(float(each[best]), abs=1e-5)
    assert abs(float(whole[0]) - float(each[best])) > 1e-3
    assert torch.equal(kept[0, 0] > 0, alone[0, best] > 0)
    # One region and no region: judged and kept as they are.
    assert logits[0, 1:].tolist() == pytest.approx(whole[1:].tolist(), abs=1e-5)
    assert torch.equal(kept[0, 1:], masks[0, 1:])


def test_at_inference_every_mask_is_one_region_while_training_judges_whole_masks(tiny_model_dir, tmp_path):
    config = InstructSamConfig.from_pretrained(tiny_model_dir)
    config.region_head = True
    config.instance_score = "semantic_x_mask_x_region"
    directory = tmp_path / "with"
    shutil.copytree(tiny_model_dir, directory)
    torch.manual_seed(0)
    InstructSamForSegmentation(config).save_pretrained(directory)
    model = InstructSamForSegmentation.from_pretrained(directory)
    processor = InstructSamProcessor.from_pretrained(directory, model.config)
    picture = np.random.default_rng(0).integers(0, 256, (72, 104, 3), dtype=np.uint8)
    batch = processor([picture], ["red circles"], phrases=[["red circles"]])
    sam = batch.pop("sam_pixel_values")
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_sizes")}
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()  # training mode, but both passes make the same masks
    with torch.no_grad():
        trained = model(**inputs, sam_pixel_values=sam, compute_logits=False)
        inferred = model.eval()(**inputs, sam_pixel_values=sam, compute_logits=False)

    def regions(masks):
        labels = connected_regions(masks[0] > 0)
        return [len(labels[q].unique()) - 1 for q in range(labels.shape[0])]

    # The untrained masks are ragged: several queries' masks fall apart into many regions.
    whole = regions(trained.pred_masks)
    assert max(whole) > 1
    # Inference keeps one region of each: the same logits there, the rest cleared.
    assert all(n <= 1 for n in regions(inferred.pred_masks))
    same = inferred.pred_masks == trained.pred_masks
    assert bool((same | (inferred.pred_masks == CLEARED_LOGIT)).all())
    assert bool((trained.pred_masks[~same] > 0).all())
    # Training judges each mask whole; inference the kept region: different verdicts.
    assert not torch.allclose(trained.region_logits, inferred.region_logits)


def test_the_head_runs_in_bfloat16_on_float32_pixels():
    # A model in bfloat16 (the default on a GPU that has it) keeps SAM3's pixels in float32.
    torch.manual_seed(0)
    head = RegionScoreHead(phrase_dim=16, dim=16).eval()
    images = torch.randn(1, 3, 48, 48)
    masks = torch.full((1, 2, 12, 12), -2.0)
    masks[0, 0, 2:6, 2:6] = 3.0
    masks[0, 1, 7:11, 6:10] = 3.0
    phrases, phrase_mask = torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        full = head(images, masks, phrases, phrase_mask)
        head.to(torch.bfloat16)
        half = head(images, masks.bfloat16(), phrases.bfloat16(), phrase_mask)
        judged, kept = head.judge_regions(images, masks.bfloat16(), phrases.bfloat16(), phrase_mask)
    assert half.dtype == torch.bfloat16 and judged.dtype == torch.bfloat16 and kept.dtype == torch.bfloat16
    assert half.float()[0].tolist() == pytest.approx(full[0].tolist(), abs=0.05)
