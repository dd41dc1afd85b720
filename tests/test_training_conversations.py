"""Conversation-form training records, checked against hand-built records in the release's format.

Expectations are computed here from the release's code as read (instructsam/training/dataset.py
`_convert_conversation`, its processor's `apply_chat_template` with `return_labels`, the model
forward): the `conversations` turns take their roles by position and follow the annotation turns;
a value loses its `<image>`/`<video>` placeholders and is stripped; every message is rendered in
Qwen3-VL's chat layout and tokenized as one string; an assistant message's labels are its tokens
after the `<|im_start|>assistant\\n` prefix (its length measured as the release measures it) up to
and with <|im_end|> (the release drops the closing newline, one token with Qwen's tokenizer),
vision markers excepted; the phrase-prompt string of a conversation-form record is empty, so
SAM3 is never run for it and it trains the text cross-entropy alone.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from instructsam_core.training.collate import TrainingCollator
from instructsam_core.training.criterion import SetCriterion
from instructsam_core.training.dataset import InstructSegDataset, check_record
from instructsam_core.training.records import RecordError, read_records
from instructsam_core.training.samples import SampleOptions

H, W = 64, 96  # the tiny processor keeps this size: 4 x 6 patches -> 6 image tokens
IMAGE_TOKENS = (H // 16) * (W // 16) // 4
GRID = 32
SEG, QUERIES = "[SEG]", 10
FULL = {"size": [H, W], "counts": [0, H * W]}  # an uncompressed RLE covering the image
RECORDS = [
    # 0: LLaVA-style turns on an image, with a record-level mask and no annotation at all
    {"image": "a.png", "height": H, "width": W, "mask": [FULL],
     "conversations": [{"from": "human", "value": "<image>\nWhat is on the table?"},
                       {"from": "gpt", "value": " A red cup <|vision_start|> sits there. "},
                       {"from": "human", "value": "And <video>behind it?"},
                       {"from": "gpt", "value": "Nothing."}]},
    # 1: text only (no image, no size), the turns as a JSON string, annotation null, no `from`,
    # a last user turn without an answer
    {"image": None, "annotation": None,
     "conversations": json.dumps([{"value": "Say hello."}, {"value": "Hello!"}, {"value": "<image>Again? "}])},
    # 2: an annotation AND conversation turns
    {"image": "a.png", "height": H, "width": W,
     "annotation": [{"type": "phrase", "text": "Red cup.", "ann_type": "mask", "ann": [json.dumps(FULL)]}],
     "conversations": [{"from": "human", "value": "<image> Why is it red?"},
                       {"from": "gpt", "value": "It is painted."}]},
    # 3: an instseg record with conversation turns (a listing draw half of the time)
    {"image": "a.png", "height": H, "width": W, "type": "instseg",
     "annotation": [{"type": "phrase", "text": "sky", "ann_type": "mask", "ann": [json.dumps(FULL)]},
                    {"type": "phrase", "text": "grass", "ann_type": "mask", "ann": None}],
     "conversations": [{"from": "human", "value": "<image>\n Count them. "}, {"from": "gpt", "value": " Two."}]},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("conversations")
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "a.png")
    (root / "train.json").write_text(json.dumps(RECORDS))
    return root


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_dir):
    from instructsam_core.modeling import InstructSamForSegmentation
    from instructsam_core.processing import InstructSamProcessor

    model = InstructSamForSegmentation.from_pretrained(tiny_model_dir).train()
    return model, InstructSamProcessor.from_pretrained(tiny_model_dir, model.config)


def _dataset(data, **options) -> InstructSegDataset:
    records, _ = read_records(data / "train.json", data)
    return InstructSegDataset(records, GRID, SampleOptions(**options), seed=0)


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _expected(tokenizer, messages: list[tuple[str, str]], image: bool) -> tuple[list[int], list[int]]:
    """The release's processor: each message rendered alone and tokenized as one string; labels
    only in assistant messages: after the prefix, through <|im_end|>, vision markers and every
    [SEG] and the token after it excepted."""
    # the prefix length as the release measures it: a generation prompt's extra tokens
    pseudo = "<|im_start|>user\n<|im_end|>\n"
    prefix = len(_tokens(tokenizer, pseudo + "<|im_start|>assistant\n")) - len(_tokens(tokenizer, pseudo))
    vocab = tokenizer.get_vocab()
    unlabelled = {vocab["<|vision_start|>"], vocab["<|vision_end|>"], vocab["<|image_pad|>"]}
    ids, labels = [], []
    for index, (role, text) in enumerate(messages):
        if role == "user":
            picture = "<|vision_start|>" + "<|image_pad|>" * IMAGE_TOKENS + "<|vision_end|>"
            picture = picture if image and index == 0 else ""
            message = _tokens(tokenizer, f"<|im_start|>user\n{picture}{text}<|im_end|>\n")
            ids += message
            labels += [-100] * len(message)
            continue
        message = _tokens(tokenizer, f"<|im_start|>assistant\n{text}<|im_end|>\n")
        row = [-100] * len(message)
        for position in range(prefix, message.index(vocab["<|im_end|>"]) + 1):
            token = message[position]
            if token not in unlabelled and token != vocab[SEG] and message[position - 1] != vocab[SEG]:
                row[position] = token
        ids += message
        labels += row
    return ids, labels


def _block(phrase: str) -> str:
    return f"<|object_ref_start|>{phrase}<|object_ref_end|><|mask_start|>{SEG * QUERIES}<|mask_end|>"


def test_reading_the_conversation_form(data):
    records, report = read_records(data / "train.json", data)
    assert report.summary() == "4 records -> 4 samples; dropped: none"
    first, text_only, both, instseg = records
    assert first.targets == [] and first.conversation[1] == " A red cup <|vision_start|> sits there. "
    assert text_only.image is None and text_only.height is None
    assert text_only.conversation == ("Say hello.", "Hello!", "<image>Again? ")
    assert [t.phrase for t in both.targets] == ["red cup"] and len(both.conversation) == 2
    # the release's batching key: annotations with instances, else the record-level masks, else -1
    assert [r.modality_length for r in records] == [1, -1, 1, 1]
    assert instseg.instseg and not first.instseg
    assert [check_record(r) for r in records] == [None] * 4


def test_conversation_only_records_as_the_release_renders_them(data, model_and_processor):
    _, processor = model_and_processor
    dataset = _dataset(data)
    item = dataset.load((0, 0))
    assert item["turns"] == [] and item["masks"] == []
    expected_messages = [("user", "What is on the table?"), ("assistant", "A red cup <|vision_start|> sits there."),
                         ("user", "And behind it?"), ("assistant", "Nothing.")]
    assert item["messages"] == expected_messages
    batch = TrainingCollator(processor)([item])
    ids, labels = _expected(processor.tokenizer, expected_messages, image=True)
    assert batch["input_ids"][0].tolist() == ids and batch["labels"][0].tolist() == labels
    assert "phrase_ids" not in batch and batch["targets"] == []
    # the vision marker written in an answer is a token of its own, and not a label
    marker = len(ids) - 1 - ids[::-1].index(processor.tokenizer.get_vocab()["<|vision_start|>"])
    assert marker > IMAGE_TOKENS + 3 and labels[marker] == -100 and labels[marker + 1] != -100

    text = dataset.load((1, 0))
    assert text["image"] is None
    assert text["messages"] == [("user", "Say hello."), ("assistant", "Hello!"), ("user", "Again?")]
    batch = TrainingCollator(processor)([text])
    ids, labels = _expected(processor.tokenizer, text["messages"], image=False)
    assert batch["input_ids"][0].tolist() == ids and batch["labels"][0].tolist() == labels
    assert "pixel_values" not in batch and "sam_pixel_values" not in batch


def test_annotation_turns_come_first_then_the_conversation(data, model_and_processor):
    _, processor = model_and_processor
    item = _dataset(data).load((2, 0))
    ((question, phrases),) = item["turns"]
    assert phrases == ["red cup"] and "'red cup'" in question
    assert item["messages"] == [("user", "Why is it red?"), ("assistant", "It is painted.")]
    assert item["trains_masks"]
    messages = [("user", question), ("assistant", _block("red cup"))] + item["messages"]
    ids, labels = _expected(processor.tokenizer, messages, image=True)
    batch = TrainingCollator(processor)([item])
    assert batch["input_ids"][0].tolist() == ids and batch["labels"][0].tolist() == labels
    # the image is in the first message only
    vocab = processor.tokenizer.get_vocab()
    assert ids.count(vocab["<|image_pad|>"]) == IMAGE_TOKENS and ids.count(vocab["<|vision_end|>"]) == 1


def _listing_and_conversation_draws(dataset):
    listing = conversation = None
    for draw in range(40):
        item = dataset.load((3, draw))
        if len(item["turns"]) == 1 and listing is None:
            listing = item
        elif len(item["turns"]) == 2 and conversation is None:
            conversation = item
    assert listing is not None and conversation is not None
    return listing, conversation


def test_an_instseg_listing_is_followed_by_the_same_cleaned_turns(data, model_and_processor):
    # (the release's listing draw takes them otherwise, by accident; training/README.md)
    _, processor = model_and_processor
    listing, conversation = _listing_and_conversation_draws(_dataset(data))
    cleaned = [("user", "Count them."), ("assistant", "Two.")]
    assert listing["messages"] == conversation["messages"] == cleaned
    ((question, phrases),) = listing["turns"]
    assert sorted(phrases) == ["grass", "sky"]
    batch = TrainingCollator(processor)([listing])
    messages = [("user", question), ("assistant", ", ".join(_block(p) for p in phrases))] + cleaned
    ids, labels = _expected(processor.tokenizer, messages, image=True)
    assert batch["input_ids"][0].tolist() == ids and batch["labels"][0].tolist() == labels
    # SAM3's prompts are the bare phrases: the turns add nothing to them
    for row, phrase in enumerate(phrases):
        expected = _tokens(processor.tokenizer, phrase)
        assert batch["phrase_ids"][row][: len(expected)].tolist() == expected
        assert int(batch["phrase_mask"][row].sum()) == len(expected)


def test_a_conversation_record_trains_the_text_cross_entropy_alone(data, model_and_processor):
    model, processor = model_and_processor
    dataset = _dataset(data)
    item = dataset.load((0, 0))  # an image and a record-level mask, no phrase
    batch = TrainingCollator(processor)([item])
    labels = batch.pop("labels")
    targets, active = batch.pop("targets"), batch.pop("trains_masks")
    batch.pop("sources")
    out = model(**batch)
    assert out.pred_masks is None and out.query_states is None  # SAM3 is not asked anything
    terms = SetCriterion()(out.pred_masks, out.pred_logits, targets, out.logits, labels, active=active,
                           generator=torch.Generator().manual_seed(0))
    _, expected_labels = _expected(processor.tokenizer, item["messages"], image=True)
    shifted = torch.tensor(expected_labels[1:])
    keep = shifted != -100
    text = F.cross_entropy(out.logits[0, :-1][keep].double(), shifted[keep]).item()
    assert terms["text"].item() == pytest.approx(text, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(text, rel=1e-5)
    assert terms["mask_bce"].item() == terms["mask_dice"].item() == terms["score"].item() == 0.0
    terms["loss"].backward()
    assert model.model.mask_queries.grad is None or not model.model.mask_queries.grad.any()
    model.zero_grad(set_to_none=True)


def test_text_only_rows_keep_the_image_rows_aligned(data, model_and_processor):
    model, processor = model_and_processor
    dataset = _dataset(data)
    annotated = dataset.load((2, 0))
    collate = TrainingCollator(processor)

    def masks(items):
        batch = collate(items)
        for key in ("labels", "targets", "trains_masks", "sources"):
            batch.pop(key)
        with torch.no_grad():
            return model(**batch), batch

    # without dropout, in the training forward's layout
    model.eval()
    layout, model.config.inference_layout = model.config.inference_layout, "trained"
    try:
        alone, _ = masks([annotated])
        mixed, batch = masks([dataset.load((1, 0)), annotated])  # text only first: its SAM3 row is blank
    finally:
        model.config.inference_layout = layout
        model.train()
    assert batch["sam_pixel_values"].shape[0] == 2 and not batch["sam_pixel_values"][0].any()
    assert batch["image_grid_thw"].shape[0] == 1 and mixed.phrase_row.tolist() == [1]
    torch.testing.assert_close(mixed.pred_masks, alone.pred_masks, rtol=1e-4, atol=1e-4)


def test_turns_mode_makes_the_conversation_an_example_of_its_own(data):
    dataset = _dataset(data, samples="turns")
    by_source = {}
    for index in range(len(dataset)):
        item = dataset.load(index)
        by_source.setdefault(item["source"], []).append(item)
    assert by_source["train.json:1"][0]["messages"][:2] == [("user", "Say hello."), ("assistant", "Hello!")]
    (conversation,) = by_source["train.json:2#conversation"]
    assert conversation["turns"] == [] and conversation["messages"][1] == ("assistant", "It is painted.")
    assert by_source["train.json:2"][0]["messages"] == [] and by_source["train.json:2"][0]["turns"][0][1] == ["red cup"]


@pytest.mark.parametrize("record, message", [
    ({"image": "a.png", "conversations": "not json"}, "'conversations' is a string but not JSON"),
    ({"image": "a.png", "conversations": {"from": "human"}}, "'conversations' must be a list"),
    ({"image": "a.png", "conversations": ["hi"]}, r"conversations\[0\] must be an object"),
    ({"image": "a.png", "conversations": [{"from": "human"}]}, r"conversations\[0\]: 'value' must be a string"),
    ({"image": "a.png", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
     r"conversations\[1\]: 'from' is 'human' at an? assistant position"),
    ({"image": "a.png", "conversations": [{"from": "gpt", "value": "a"}]}, r"conversations\[0\]: 'from' is 'gpt'"),
    ({"image": "a.png", "conversations": [{"value": "q"}, {"value": "Sure, [SEG]."}]},
     r"conversations\[1\]: the text holds \[SEG\]"),
    ({"image": "a.png", "conversations": [{"value": "<|image_pad|>"}]},
     r"conversations\[0\]: the text holds <\|image_pad\|>"),
    ({"image": "a.png", "conversations": []}, "'annotation' is missing"),
    ({"image": "a.png", "annotation": None}, "'annotation' is null and there are no 'conversations' turns"),
    ({"video": "v.mp4", "conversations": [{"value": "q"}]}, "video records cannot be trained on"),
    ({"image": "", "conversations": [{"value": "q"}]}, "'image' must be a non-empty relative path"),
    ({"image": "a.png", "height": 64, "conversations": [{"value": "q"}]}, "'height' and 'width' must be positive"),
    ({"image": "a.png", "mask": "{", "conversations": [{"value": "q"}]}, "'mask' is a string but not JSON"),
])
def test_malformed_conversation_records_are_one_line_errors(tmp_path, record, message):
    (tmp_path / "t.json").write_text(json.dumps([record]))
    with pytest.raises(RecordError, match=r"^t\.json:0: " + message) as caught:
        read_records(tmp_path / "t.json", tmp_path)
    assert len(str(caught.value).splitlines()) == 1
    _, report = read_records(tmp_path / "t.json", tmp_path, skip_bad=True)
    assert report.skipped["malformed records"] == 1


def test_record_level_masks_and_sizes_are_checked_up_front(tmp_path, data):
    Image.open(data / "a.png").save(tmp_path / "a.png")
    turns = [{"value": "q"}, {"value": "a"}]
    records = [
        {"image": "a.png", "mask": [[1.0, 2.0, 3.0]], "height": H, "width": W, "conversations": turns},  # 3 numbers
        {"image": "a.png", "height": H + 1, "width": W, "conversations": turns},
        {"image": "a.png", "mask": [FULL], "conversations": turns},  # no size stated: nothing to compare
        {"image": "missing.png", "conversations": turns},
        {"image": None, "mask": [[1.0]], "conversations": turns},  # text only: the release ignores its masks
        {"image": "a.png", "height": H, "width": W, "mask": [FULL], "conversations": turns, "annotation": [
            {"type": "phrase", "text": "cup", "ann_type": "mask", "ann": None}]},
    ]
    (tmp_path / "t.json").write_text(json.dumps(records))
    read, report = read_records(tmp_path / "t.json", tmp_path)
    problems = [check_record(r) for r in read]
    assert problems[0].startswith("t.json:0: mask 0:")
    assert problems[1].startswith("t.json:1: image") and f"{W}x{H + 1}" in problems[1]
    assert problems[2] is None and problems[4] is None and problems[5] is None
    assert problems[3].startswith("t.json:3:")
    assert [r.modality_length for r in read] == [1, -1, 1, -1, 1, -1]
    # beside an annotation the record-level masks are ignored, and counted
    assert read[5].masks is None
    assert report.skipped["record-level 'mask' lists beside an 'annotation' (ignored)"] == 1


def test_training_runs_on_a_mixture_with_conversation_records(tmp_path):
    import yaml

    from instructsam_core.synth import generate
    from instructsam_core.training.recipe import load_recipe
    from instructsam_core.training.trainer import Trainer

    generate(tmp_path, 2, seed=5, split="train", progress=False)
    image = json.loads((tmp_path / "train.json").read_text())[0]["image"]
    turns = [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "Shapes on a plain ground."}]
    (tmp_path / "chat.json").write_text(json.dumps([{"image": image, "conversations": turns},
                                                    {"conversations": turns}]))
    recipe = {"seed": 1, "model": {"init": "scratch", "scratch": {}},
              "data": {"mixture": [{"name": "synth", "path": "train.json"}, {"name": "chat", "path": "chat.json"}],
                       "num_workers": 0},
              "optimizer": {"lr_groups": [{"name": "all", "pattern": "", "lr": 1e-3}]},
              "schedule": {"max_steps": 3}, "batch": {"per_device": 2}, "threads": 1,
              "loss": {"num_points": 64}, "log_every": 1}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    summary = Trainer(load_recipe(tmp_path / "recipe.yaml"), tmp_path, tmp_path / "run", progress=False).run()
    assert summary["steps"] == 3 and np.isfinite(summary["final"]["loss"])
    assert (tmp_path / "run" / "final" / "config.json").is_file()
