"""The release's data building, checked against hand-built records in the release's format.

Every expectation is computed here from the facts of reference-design.md ("The released training
as written") and the release's code as read: the conversation rendered message by message in
Qwen3-VL's chat layout and tokenized as one string, labels by the `[SEG]` rule, masks decoded with
pycocotools and resized with torch's nearest interpolation, questions from the release's lists.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as coco

from instructsam_core.errors import UserError
from instructsam_core.training.collate import TrainingCollator
from instructsam_core.training.dataset import InstructSegDataset, TargetOptions
from instructsam_core.training.mixture import build_mixture, load_mixture_file
from instructsam_core.training.records import read_records
from instructsam_core.training.sampler import StepBatchSampler

H, W = 64, 96  # multiples of 32: the tiny processor keeps the size, 4 x 6 patches -> 6 image tokens
IMAGE_TOKENS = (H // 16) * (W // 16) // 4
GRID = 32  # the tiny model's mask grid (112 / 14 * 4)
SEG, QUERIES = "[SEG]", 10
# The release's question lists (instructsam/training/utils.py), as released.
PHRASE_QUESTIONS = [
    "Please segment '{phrase}'.",
    "Can you segment '{phrase}' in this image?",
    "Please segment '{phrase}' in this image.",
    "Could you provide a segmentation mask for '{phrase}' in this image?",
    "Please identify and segment '{phrase}' in this image.",
    "Where is '{phrase}' in this image? Please respond with a segmentation mask.",
    "Can you highlight '{phrase}' in this image with a segmentation mask?",
]
TWO_PHRASE_QUESTIONS = [
    "Please segment '{phrase1} and {phrase2}'.",
    "Can you segment '{phrase1} and {phrase2}' in this image?",
    "Please segment '{phrase1} and {phrase2}' in this image.",
    "Could you provide a segmentation mask for '{phrase1} and '{phrase2}' in this image?",
    "Please identify and segment '{phrase1} and {phrase2}' in this image.",
    "Where is '{phrase1} and {phrase2}' in this image? Please respond with a segmentation mask.",
    "Can you highlight '{phrase1} and {phrase2}' in this image with a segmentation mask?",
]


def _rle(mask: np.ndarray) -> str:
    encoded = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return json.dumps({"size": encoded["size"], "counts": encoded["counts"].decode()})


def _block(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[rows, cols] = True
    return mask


POLYGON = [10.0, 10.0, 50.0, 10.0, 50.0, 40.0, 10.0, 40.0]
CUP, PLATE, FORK = _block(slice(0, 20), slice(0, 30)), _block(slice(0, 20), slice(35, 60)), _block(slice(30, 60), slice(70, 90))
RECORDS = {
    "sentence": {"image": "a.png", "height": H, "width": W, "annotation": [
        {"type": "sentence", "text": "What can I  sit on?", "category": "Chair.", "ann_type": "mask",
         "ann": [json.dumps([POLYGON])]}]},
    "two_phrase": {"image": "a.png", "height": H, "width": W, "annotation": [
        {"type": "phrase", "text": "Red cup.", "ann_type": "mask", "ann": [_rle(CUP)]},
        {"type": "phrase", "text": "blue plate", "ann_type": "mask", "ann": [_rle(PLATE)]},
        {"type": "phrase", "text": "Green fork", "ann_type": "mask", "ann": [_rle(FORK)]}]},
    "instseg": {"image": "a.png", "height": H, "width": W, "type": "instseg", "annotation": json.dumps([
        {"type": "phrase", "text": "sky", "ann_type": "mask", "ann": [_rle(np.ones((H, W), bool))]},
        {"type": "phrase", "text": "unicorn", "ann_type": "mask", "ann": None},
        {"type": "phrase", "text": "grass", "ann_type": "mask", "ann": [_rle(_block(slice(32, 64), slice(0, 96)))]}])},
    "all_null": {"image": "a.png", "height": H, "width": W, "annotation": [
        {"type": "phrase", "text": "dragon", "ann_type": "mask", "ann": None},
        {"type": "phrase", "text": "ghost", "ann_type": "mask", "ann": None}]},
    "bbox": {"image": "a.png", "height": H, "width": W, "annotation": [
        {"type": "phrase", "text": "car", "ann_type": "bbox", "ann": [json.dumps([5.7, 3.2, 20.9, 10.5])]}]},
}
NAMES = list(RECORDS)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("release_data")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "a.png")
    (root / "train.json").write_text(json.dumps([RECORDS[name] for name in NAMES]))
    return root


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from instructsam_core.processing import InstructSamProcessor

    return InstructSamProcessor.from_pretrained(tiny_model_dir)


def _dataset(data, **targets) -> InstructSegDataset:
    records, _ = read_records(data / "train.json", data)
    return InstructSegDataset(records, GRID, targets=TargetOptions(**targets), seed=0)


def _phrase_block(phrase: str) -> str:
    return f"<|object_ref_start|>{phrase}<|object_ref_end|><|mask_start|>{SEG * QUERIES}<|mask_end|>"


def _expected_ids_and_labels(tokenizer, turns) -> tuple[list[int], list[int]]:
    """The whole conversation as one string in Qwen3-VL's chat layout, tokenized at once; labels:
    each answer and its <|im_end|>, except every [SEG] and the token after it."""
    text = ""
    for index, (question, phrases) in enumerate(turns):
        image = "<|vision_start|>" + "<|image_pad|>" * IMAGE_TOKENS + "<|vision_end|>" if index == 0 else ""
        answer = ", ".join(_phrase_block(p) for p in phrases)
        text += f"<|im_start|>user\n{image}{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    vocab = tokenizer.get_vocab()
    start, end, seg = vocab["<|im_start|>"], vocab["<|im_end|>"], vocab[SEG]
    opening = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    position = 0
    while position < len(ids):
        if ids[position] == start and ids[position : position + len(opening)] == opening:
            position += len(opening)
            while True:
                after_seg = ids[position - 1] == seg
                if ids[position] != seg and not after_seg:
                    labels[position] = ids[position]
                if ids[position] == end:
                    break
                position += 1
        position += 1
    return ids, labels


def _grid(mask: np.ndarray) -> np.ndarray:
    """The release's target: F.interpolate(mode='nearest') from the image size to the mask grid."""
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=(GRID, GRID), mode="nearest")[0, 0].numpy() > 0.5


def test_token_ids_labels_and_bare_phrase_prompts(data, processor):
    dataset = _dataset(data)
    collate = TrainingCollator(processor)
    for index in range(len(NAMES)):
        for draw in range(4):
            item = dataset.load((index, draw))
            batch = collate([item])
            ids, labels = _expected_ids_and_labels(processor.tokenizer, item["turns"])
            assert batch["input_ids"][0].tolist() == ids, NAMES[index]
            assert batch["labels"][0].tolist() == labels, NAMES[index]
            assert int(batch["attention_mask"].sum()) == len(ids)
            phrases = [p for _, turn in item["turns"] for p in turn]
            # SAM3's prompt in training: each phrase's own tokens, no ref markers
            for row, phrase in enumerate(phrases):
                expected = processor.tokenizer(phrase, add_special_tokens=False)["input_ids"]
                assert batch["phrase_ids"][row][: len(expected)].tolist() == expected
                assert int(batch["phrase_mask"][row].sum()) == len(expected)
    sentence = dataset.load((0, 0))
    assert sentence["turns"] == [("What can I  sit on?", ["chair"])]  # asked as written, answered with its category


def test_targets_on_the_mask_grid(data):
    dataset = _dataset(data)
    polygon = coco.decode(coco.merge(coco.frPyObjects([POLYGON], H, W))).astype(bool)
    item = dataset.load((0, 0))
    assert item["trains_masks"] and len(item["masks"]) == 1
    np.testing.assert_array_equal(item["masks"][0][0], _grid(polygon))
    # two-phrase record: each phrase's instance on the grid, whatever the turn it is asked in
    truth = {"red cup": CUP, "blue plate": PLATE, "green fork": FORK, "Red cup.": CUP, "Green fork": FORK}
    item = dataset.load((1, 3))
    phrases = [p for _, turn in item["turns"] for p in turn]
    for phrase, masks in zip(phrases, item["masks"]):
        np.testing.assert_array_equal(masks[0], _grid(truth[phrase]))
    # instseg: the no-target phrase has one all-zero placeholder instance (release)
    item = dataset.load((2, 0))
    phrases = [p for _, turn in item["turns"] for p in turn]
    unicorn = item["masks"][phrases.index("unicorn")]
    assert unicorn.shape == (1, GRID, GRID) and not unicorn.any() and item["trains_masks"]
    assert _dataset(data, no_target_phrase="unmatched").load((2, 0))["masks"][phrases.index("unicorn")].shape[0] == 0
    # all-null and box samples train the text alone (release); boxes are truncated: x 5 w 20, y 3 h 10
    assert not dataset.load((3, 0))["trains_masks"]
    box_item = dataset.load((4, 0))
    box = np.zeros((H, W), bool)
    box[3:13, 5:25] = True
    assert not box_item["trains_masks"]
    np.testing.assert_array_equal(box_item["masks"][0][0], _grid(box))
    assert _dataset(data, box_samples="mask").load((4, 0))["trains_masks"]
    assert _dataset(data, targetless_samples="all_terms").load((3, 0))["trains_masks"]


def test_a_record_of_three_phrases_merges_a_partner_into_a_two_phrase_answer(data):
    dataset = _dataset(data)
    cleaned = {"Red cup.": "red cup", "blue plate": "blue plate", "Green fork": "green fork"}
    partners = Counter()
    for draw in range(60):
        turns = dataset.load((1, draw))["turns"]
        # disjoint masks: the first turn takes the partner (the last annotation after the shuffle)
        # under its text as written; the partner is asked again on its own at the end
        assert [len(phrases) for _, phrases in turns] == [2, 1, 1]
        (question, (first, partner)), (_, (second,)), (_, (alone,)) = turns
        assert partner in cleaned and cleaned[partner] == alone
        assert {first, second, alone} == set(cleaned.values())
        assert question in {t.format(phrase1=first, phrase2=partner) for t in TWO_PHRASE_QUESTIONS}
        assert turns[1][0] in {t.format(phrase=second) for t in PHRASE_QUESTIONS}
        partners[partner] += 1
    assert len(partners) == 3  # annotations are shuffled on every draw
    # with merged_phrase: once, the partner is asked only inside the two-phrase answer
    from instructsam_core.training.samples import SampleOptions

    records, _ = read_records(data / "train.json", data)
    once = InstructSegDataset(records, GRID, SampleOptions(merged_phrase="once"), seed=0)
    assert [len(p) for _, p in once.load((1, 0))["turns"]] == [2, 1]


def test_overlapping_partner_is_left_out_and_limits_drop_the_rest(tmp_path):
    same = _rle(CUP)
    annotations = [{"type": "phrase", "text": f"thing {i}", "ann_type": "mask", "ann": [same]} for i in range(12)]
    crowd = {"type": "phrase", "text": "crowd", "ann_type": "mask", "ann": [same] * 11}
    (tmp_path / "t.json").write_text(json.dumps([{"image": "a.png", "height": H, "width": W,
                                                  "annotation": annotations + [crowd]}]))
    records, _ = read_records(tmp_path / "t.json", tmp_path)
    dataset = InstructSegDataset(records, GRID, seed=0)
    for draw in range(10):
        turns = dataset.sample(0, draw)[1].turns
        # every mask overlaps the partner: no merge, so the partner is not asked; 10 phrases at most
        assert [len(turn.phrases) for turn in turns] == [1] * 10
        assert "crowd" not in {p.text for turn in turns for p in turn.phrases}


def test_a_merged_partner_counts_towards_the_ten_phrases(tmp_path):
    blocks = [_block(slice(16 * (i // 6), 16 * (i // 6) + 8), slice(16 * (i % 6), 16 * (i % 6) + 8)) for i in range(12)]
    annotations = [{"type": "phrase", "text": f"thing {i}", "ann_type": "mask", "ann": [_rle(b)]}
                   for i, b in enumerate(blocks)]
    (tmp_path / "t.json").write_text(json.dumps([{"image": "a.png", "height": H, "width": W, "annotation": annotations}]))
    records, _ = read_records(tmp_path / "t.json", tmp_path)
    dataset = InstructSegDataset(records, GRID, seed=0)
    for draw in range(5):
        turns = dataset.sample(0, draw)[1].turns
        # disjoint: the first turn takes the partner; 10 phrases in all, so 9 turns
        assert [len(turn.phrases) for turn in turns] == [2] + [1] * 8


def test_instseg_records_are_a_listing_half_of_the_time(data):
    dataset = _dataset(data)
    listings = 0
    for draw in range(300):
        turns = dataset.load((2, draw))["turns"]
        if len(turns) == 1 and len(turns[0][1]) == 3:
            question, phrases = turns[0]
            listing = f"{phrases[0]}, {phrases[1]} and {phrases[2]}"  # "a, b and c", in answer order
            assert question in {t.format(phrase=listing) for t in PHRASE_QUESTIONS}
            listings += 1
        else:
            assert all(q in {t.format(phrase=p[0]) for t in PHRASE_QUESTIONS} or len(p) == 2 for q, p in turns)
    assert 110 <= listings <= 190  # p = 0.5 (the conversation form never asks 3 phrases in one turn)


def test_draws_are_a_function_of_the_key(data):
    dataset = _dataset(data)
    assert dataset.load((2, 5))["turns"] == dataset.load((2, 5))["turns"]
    assert len({json.dumps(dataset.load((2, d))["turns"]) for d in range(20)}) > 3


def test_modality_grouped_order_keeps_kinds_apart():
    # 4 examples with mask annotations (counts 1..4), 6 without; per_device 1, 2 ranks x 1 micro = groups of 2
    lengths = [3, -1, 1, -1, -1, 4, 2, -1, -1, -1]
    sampler = StepBatchSampler(10, seed=3, per_device=1, grad_accum=1, world_size=2, rank=0, total_steps=5,
                               lengths=lengths)
    order = sampler.order(0).tolist()
    assert sorted(order) == list(range(10))
    # each kind in groups of 2 (one optimizer step), sorted most annotations first; the last group
    # of each kind (here 2 of the 4, 2 of the 6) closes the epoch together, in index order
    groups = [order[i : i + 2] for i in range(0, 6, 2)]
    assert sorted(len({lengths[i] > 0 for i in group}) for group in groups) == [1, 1, 1]
    assert sum(lengths[group[0]] > 0 for group in groups) == 1 and sum(lengths[group[0]] < 0 for group in groups) == 2
    for group in groups:
        assert lengths[group[0]] >= lengths[group[1]]
    tail = order[6:]
    assert tail == sorted(tail) and sum(lengths[i] > 0 for i in tail) == 2
    assert order == StepBatchSampler(10, seed=3, per_device=1, grad_accum=1, world_size=2, rank=1, total_steps=5,
                                     lengths=lengths).order(0).tolist()


def test_release_mixture_list_and_missing_files(tmp_path, data):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "a.json").write_text((data / "train.json").read_text())
    listing = tmp_path / "stage.txt"
    listing.write_text("# the release's form\na.json 3\n\na.json\n")
    entries = load_mixture_file(listing)
    assert [(e.path, e.repeat) for e in entries] == [("a.json", 3.0), ("a.json", 1.0)]
    Image.open(data / "a.png").save(tmp_path / "a.png")
    records, _ = build_mixture(entries, tmp_path, json_dir="training")
    assert len(records) == 4 * 5  # 5 records, 3 + 1 copies
    listing.write_text("a.json 2\nmissing_one.json 10\nmissing_two.json\n")
    with pytest.raises(UserError) as caught:
        build_mixture(load_mixture_file(listing), tmp_path, json_dir="training")
    message = str(caught.value)
    assert "2 training file(s)" in message and "missing_one.json" in message and "missing_two.json" in message
    assert len(message.splitlines()) == 1
    listing.write_text("a.json ten\n")
    with pytest.raises(UserError, match=r"stage\.txt:1: expected 'file\.json repeat'"):
        load_mixture_file(listing)


def test_cli_reads_the_release_list_in_place_of_the_recipe_mixture(tmp_path, tiny_model_dir, capsys):
    import yaml

    from instructsam_core.cli import main as cli_main

    (tmp_path / "training").mkdir()
    listing = tmp_path / "stage1.txt"
    listing.write_text("refcoco.json 10\ncoco_instances.json 1\n")
    recipe = {"model": {"init": str(tiny_model_dir)}, "data": {"mixture": "nowhere.yaml", "json_dir": "training"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code = cli_main(["train", "--recipe", str(tmp_path / "r.yaml"), "--mixture", str(listing), "--data-root",
                     str(tmp_path), "--output", str(tmp_path / "run"), "--quiet"])
    assert code != 0  # both files are missing: one error naming both
    error = capsys.readouterr().err
    assert "refcoco.json" in error and "coco_instances.json" in error
    assert str(listing.resolve()) in (tmp_path / "run" / "recipe.yaml").read_text()


def test_release_question_lists_are_the_release_strings():
    from instructsam_core.training.templates import release_templates

    templates = release_templates()
    assert list(templates["phrase"]) == PHRASE_QUESTIONS and list(templates["two_phrases"]) == TWO_PHRASE_QUESTIONS
    assert all(re.search(r"the text '\{phrase\}'", t) for t in templates["ocr"]) and len(templates["ocr"]) == 7
    from instructsam_core.training.templates import RELEASE_TEMPLATES

    origin = json.loads(Path(RELEASE_TEMPLATES).read_text())["origin"]
    assert "DCDmllm/InstructSAM" in origin and "utils.py" in origin
