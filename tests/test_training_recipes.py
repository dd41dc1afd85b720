"""Recipe checking and the shipped recipes/mixtures."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from instructsam_core.errors import UserError
from instructsam_core.training.mixture import load_mixture_file
from instructsam_core.training.recipe import load_recipe, parse_recipe

TRAINING = Path(__file__).resolve().parents[1] / "training"
BASE = {"model": {"init": "scratch"}, "data": {"mixture": [{"path": "train.json"}]}}


@pytest.mark.parametrize("name", ["stage1.yaml", "stage2.yaml", "synthetic.yaml"])
def test_shipped_recipes_are_valid(name):
    recipe = load_recipe(TRAINING / name)
    if isinstance(recipe["data"]["mixture"], str):
        entries = load_mixture_file(recipe.resolve(recipe["data"]["mixture"]))
        assert entries and all(e.repeat > 0 for e in entries)
    if recipe["deepspeed"]:
        assert recipe.resolve(recipe["deepspeed"]).is_file()


def test_stage_recipes_follow_the_reference():
    stage1, stage2 = load_recipe(TRAINING / "stage1.yaml"), load_recipe(TRAINING / "stage2.yaml")
    # scripts/train/stage{1,2}.sh: projector/llm lr, sam_decoder lr, gradient accumulation
    for recipe, (sam_lr, rest_lr, accum) in ((stage1, (1e-5, 5e-6, 2)), (stage2, (5e-6, 2e-6, 1))):
        lrs = [g["lr"] for g in recipe["optimizer"]["lr_groups"]]
        assert lrs == [rest_lr, sam_lr, rest_lr]
        assert recipe["trainable"]["lora"] == {"r": 64, "alpha": 16, "dropout": 0.05,
                                               "target": recipe["trainable"]["lora"]["target"]}
        assert recipe["schedule"]["epochs"] == 1 and recipe["schedule"]["warmup_ratio"] == 0.03
        assert recipe["schedule"]["warmup_from"] == 0
        assert recipe["seed"] == 42 and recipe["loss"]["num_points"] == 12544
        assert recipe["batch"] == {"per_device": 1, "grad_accum": accum, "accumulation": "sum",
                                   "group_by_modality_length": True}
        assert recipe["data"]["max_image_tokens"] == 8192 and recipe["data"]["json_dir"] == "training"
        # every behaviour option at the release's value (the first of each choice)
        assert (recipe["data"]["samples"], recipe["data"]["instruction_style"], recipe["data"]["multi_objects"],
                recipe["data"]["merged_phrase"], recipe["data"]["point_annotations"]) == \
            ("conversation", "release", True, "repeat", "question")
        loss = recipe["loss"]
        assert (loss["point_sampling"], loss["phrase_prompt"], loss["no_target_phrase"], loss["targetless_samples"],
                loss["box_samples"], loss["score_target"], loss["matcher"]) == \
            ("bilinear", "bare", "placeholder", "text_only", "text_only", "dice",
             {"dice": 0.5, "mask": 2.0, "score": 1.0, "dice_smooth": 1e-3})
    # the release's lists, file by file (data/stage1.txt: 48 files, data/stage2.txt: 10)
    stage1_files = {e.path: e.repeat for e in load_mixture_file(TRAINING / "mixtures" / "stage1.yaml")}
    assert len(stage1_files) == 48 and stage1_files["roborefit.json"] == 10 and stage1_files["refclef.json"] == 10
    assert stage1_files["paco_ego4d_v1_train.json"] == 1 and stage1_files["obj365_cat_646k_part19.json"] == 1
    assert stage1_files["obj365_phrase_final_mask_548k_part10.json"] == 1 and stage1_files["mapillary_part4.json"] == 1
    repeats = {e.path: e.repeat for e in load_mixture_file(TRAINING / "mixtures" / "stage2.yaml")}
    assert repeats == {"reason_seg_cat.json": 10, "roboafford_paco.json": 1, "refcoco.json": 2, "refcoco+.json": 2,
                       "refcocog.json": 2, "grefcoco_single.json": 2, "refclef.json": 2, "lisa_plus_cot.json": 2,
                       "lisa_plus_instance.json": 2, "inst2seg.json": 1}


def test_synthetic_recipe_spells_out_what_trained_the_default_model():
    synthetic = load_recipe(TRAINING / "synthetic.yaml")
    resolved = load_recipe(TRAINING.parent / "instructsam_core" / "default_model" / "recipe.yaml")
    assert synthetic.values == resolved.values
    raw = yaml.safe_load((TRAINING / "synthetic.yaml").read_text())
    assert raw["data"]["samples"] == "turns" and raw["schedule"]["warmup_from"] == 1
    assert raw["batch"]["group_by_modality_length"] is False
    for key, value in {"point_sampling": "nearest", "phrase_prompt": "model", "no_target_phrase": "unmatched",
                       "targetless_samples": "all_terms", "box_samples": "mask"}.items():
        assert raw["loss"][key] == value, key
    assert raw["loss"]["matcher"]["dice_smooth"] == 1.0


def test_recipe_errors_are_one_line_and_name_the_key(tmp_path):
    with pytest.raises(UserError, match="unknown key 'lerning_rate'"):
        parse_recipe({**BASE, "optimizer": {"lerning_rate": 1}})
    with pytest.raises(UserError, match=r"lr_groups\[0\].lr must be a positive number"):
        parse_recipe({**BASE, "optimizer": {"lr_groups": [{"pattern": "", "lr": -1}]}})
    with pytest.raises(UserError, match="invalid pattern"):
        parse_recipe({**BASE, "trainable": {"train": ["("]}})
    with pytest.raises(UserError, match="data.mixture is required"):
        parse_recipe({"model": {"init": "scratch"}})
    path = tmp_path / "r.yaml"
    path.write_text("seed: [1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(path)
    path.write_text(yaml.safe_dump({**BASE, "batch": {"per_device": 0}}))
    with pytest.raises(UserError, match=r"r\.yaml: recipe: batch.per_device"):
        load_recipe(path)


def test_fingerprint_follows_content():
    a = parse_recipe(BASE)
    b = parse_recipe({**BASE, "seed": 7})
    assert a.fingerprint() == parse_recipe(BASE).fingerprint() != b.fingerprint()
    assert a["loss"]["weights"] == {"text": 1.0, "mask_bce": 4.0, "mask_dice": 0.25, "score": 1.0,
                                    "box_l1": 0.0, "box_giou": 0.0, "semantic": 0.0, "presence": 0.0,
                                    "outside": 0.0, "region": 0.0}


def test_matcher_costs_are_recipe_keys():
    recipe = parse_recipe({**BASE, "loss": {"matcher": {"score": 0.0}, "score_target": "mask_iou"}})
    assert recipe["loss"]["matcher"] == {"dice": 0.5, "mask": 2.0, "score": 0.0, "dice_smooth": 1e-3}
    assert parse_recipe(BASE)["loss"]["matcher"] == {"dice": 0.5, "mask": 2.0, "score": 1.0, "dice_smooth": 1e-3}
    with pytest.raises(UserError, match="loss.matcher.dice_smooth must be a positive number"):
        parse_recipe({**BASE, "loss": {"matcher": {"dice_smooth": 0}}})
    for section, key in (("data", "samples"), ("loss", "no_target_phrase"), ("batch", "accumulation")):
        with pytest.raises(UserError, match=rf"{section}\.{key} must be one of .* \(the first is the release's\)"):
            parse_recipe({**BASE, section: {**BASE.get(section, {}), key: "nonsense"}})
    with pytest.raises(UserError, match="loss.matcher.score must be a non-negative number"):
        parse_recipe({**BASE, "loss": {"matcher": {"score": -1}}})
    with pytest.raises(UserError, match="needs a mask cost"):
        parse_recipe({**BASE, "loss": {"matcher": {"dice": 0, "mask": 0}}})
    with pytest.raises(UserError, match="unknown key 'box'"):
        parse_recipe({**BASE, "loss": {"matcher": {"box": 1.0}}})
    with pytest.raises(UserError, match="score_target"):
        parse_recipe({**BASE, "loss": {"score_target": "iou"}})


def test_fused_optimizer_is_a_checked_flag():
    assert parse_recipe(BASE)["optimizer"]["fused"] is False
    assert parse_recipe({**BASE, "optimizer": {"fused": True}})["optimizer"]["fused"] is True
    with pytest.raises(UserError, match="optimizer.fused must be true or false"):
        parse_recipe({**BASE, "optimizer": {"fused": "yes"}})


@pytest.mark.parametrize(
    "text, field",
    [
        ("optimizer: {lr_groups: [{name: all, pattern: '', lr: .nan}]}", r"optimizer\.lr_groups\[0\]\.lr"),
        ("loss: {weights: {semantic: .inf}}", r"loss\.weights\.semantic"),
        ("loss: {matcher: {dice: -.inf}}", r"loss\.matcher\.dice"),
        ("schedule: {warmup_ratio: .nan}", r"schedule\.warmup_ratio"),
        ("optimizer: {betas: [0.9, .nan]}", r"optimizer\.betas\[1\]"),
        ("optimizer: {max_grad_norm: 1.0e+999}", r"optimizer\.max_grad_norm"),  # YAML reads this as inf
        ("model: {init: scratch, scratch_init: {query_bank_std: .nan}}", r"model\.scratch_init\.query_bank_std"),
        ("model: {init: scratch, scratch_overrides: {sam3_config.x: .inf}}", r"model\.scratch_overrides\.sam3_config\.x"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(tmp_path, text, field):
    path = tmp_path / "r.yaml"
    base = "model: {init: scratch}\n" if not text.startswith("model") else ""
    path.write_text(base + "data: {mixture: [{path: train.json}]}\n" + text + "\n")
    with pytest.raises(UserError, match=rf"r\.yaml: recipe: {field} must be a finite number") as caught:
        load_recipe(path)
    assert len(str(caught.value).splitlines()) == 1


def test_recipe_errors_name_the_file_once(tmp_path):
    path = tmp_path / "r.yaml"
    for text in ("[1, 2]\n", "", "seed: 1\n"):
        path.write_text(text)
        with pytest.raises(UserError) as caught:
            load_recipe(path)
        assert str(caught.value).count(str(path)) == 1, str(caught.value)
