"""A model directory as the authors' release writes it loads and runs as their inference runs it.

The directory is built from the facts by tests/releasemaker.py, not by this project's save path.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from releasemaker import BIG, BLUE, CIRCLE, QUERIES, QWEN_IDS, RED, SQUARE, VOCAB_ROWS, build_release_directory
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, Qwen2VLImageProcessorPil, Qwen3VLConfig

from instructsam_core import tokens as T
from instructsam_core.cli import main as cli_main
from instructsam_core.errors import CheckpointError
from instructsam_core.image_preprocessing import image_tensor, sam3_pixels
from instructsam_core.modeling import InstructSamForSegmentation
from instructsam_core.processing import InstructSamProcessor


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory) -> Path:
    return build_release_directory(tmp_path_factory.mktemp("release") / "InstructSAM-tiny")


def _stored(directory: Path) -> dict[str, torch.Tensor]:
    state = {}
    for shard in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return state


def _picture(height=90, width=140, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_loads_a_release_directory_with_strict_keys(release_dir, tmp_path, capsys):
    Image.fromarray(_picture()).save(tmp_path / "frame.png")
    code, out, err = _cli(capsys, "predict", "--model", str(release_dir), "--image", str(tmp_path / "frame.png"),
                          "--instruction", "red circle", "--out", str(tmp_path / "out"), "--threshold", "0")
    assert code == 0, err
    assert "inference layout: release" in out  # the release's checkpoint runs as the release's inference
    records = json.loads((tmp_path / "out" / "instances.json").read_text())
    assert len(records) == QUERIES and {r["phrase"] for r in records} == {"red circle"}


def test_every_stored_weight_is_loaded_as_stored(release_dir):
    model = InstructSamForSegmentation.from_pretrained(release_dir)
    parameters = dict(model.named_parameters())
    stored = _stored(release_dir)
    for key, value in stored.items():
        if key.startswith(("model.grounding_model.model.geometry_encoder.",
                           "model.grounding_model.model.text_projection.")):
            assert key not in parameters  # stored by the release, never used by its inference
            continue
        assert torch.equal(parameters[key].detach(), value), key
    # lm_head is not stored: it is the token embedding table (tied).
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()


def test_the_detector_has_no_presence_token_and_decodes_the_ten_queries_alone(release_dir):
    model = InstructSamForSegmentation.from_pretrained(release_dir).eval()
    decoder = model.model.grounding_model.model.detr_decoder
    assert not [name for name, _ in model.named_parameters() if "presence" in name]
    assert decoder.reference_points.weight.shape == (QUERIES, 4)  # the config's 200 queries became 10
    lengths = []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda module, args, kwargs: lengths.append(
        kwargs["query"].shape[1]), with_kwargs=True) for layer in decoder.layers]
    processor = InstructSamProcessor.from_pretrained(release_dir, model.config)
    batch = processor([_picture()], ["find the red circle"], phrases=[["red circle", "big blue square"]])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_sizes")}
    with torch.no_grad():
        out = model(**inputs, compute_logits=False)
    for hook in hooks:
        hook.remove()
    assert lengths == [QUERIES] * len(decoder.layers)  # nothing prepended to the query sequence
    assert out.presence_logits is None and out.pred_logits.shape == (2, QUERIES)


def test_sam3_phrase_prompt_of_a_two_phrase_answer_is_the_releases(release_dir):
    model = InstructSamForSegmentation.from_pretrained(release_dir).eval()
    processor = InstructSamProcessor.from_pretrained(release_dir, model.config)
    batch = processor([_picture()], ["find the red circle"], phrases=[["red circle", "big blue square"]])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_sizes", "sam_pixel_values")}
    with torch.no_grad():
        out = model(**inputs, compute_logits=False)
    ref_start, ref_end = QWEN_IDS[T.REF_START], QWEN_IDS[T.REF_END]
    assert out.phrase_ids.tolist() == [[ref_start, RED, CIRCLE, ref_end, 0],
                                       [ref_start, BIG, BLUE, SQUARE, ref_end]]
    assert out.phrase_mask.tolist() == [[True] * 4 + [False], [True] * 5]
    # A long phrase: the markers are added first, then the prompt is cut to 32 tokens.
    ids, mask = model.sam3_prompt([[RED] * 40])
    assert ids.tolist() == [[ref_start] + [RED] * 31] and bool(mask.all())


@pytest.mark.parametrize("size", [(1200, 2080), (150, 260)])
def test_sam3_pixels_equal_an_independent_antialiased_resize(size):
    """The release's SAM3 input at the real size (1008): reduced and enlarged frames."""
    picture = _picture(*size, seed=3)
    ours = sam3_pixels([image_tensor(picture)], 1008)[0].permute(1, 2, 0).numpy()
    # PIL's bilinear resize antialiases when reducing (its filter support scales with the ratio).
    reference = np.asarray(Image.fromarray(picture).resize((1008, 1008), Image.BILINEAR), dtype=np.float32)
    reference = (reference / 255.0 - 0.5) / 0.5
    one_step = 2.0 / 255.0
    assert np.abs(ours - reference).max() <= one_step + 1e-5
    # Without antialiasing (OpenCV's default) a reduction is far off.
    if size[0] > 1008:
        import cv2

        plain = (cv2.resize(picture, (1008, 1008), interpolation=cv2.INTER_LINEAR) / 255.0 - 0.5) / 0.5
        assert np.abs(plain - reference).max() > 10 * one_step


@pytest.mark.parametrize("size", [(700, 1100), (40, 60)])
def test_qwen_pixels_are_within_one_uint8_step_of_the_fast_processors_rule(release_dir, size):
    """Reduced and enlarged: smart resize to 32-px units in the pixel budget, bicubic WITH
    antialiasing in float, rounded to uint8, mean/std 0.5, Qwen's patch layout. The resize is
    torch's (the fast processor's kernel); size rule, normalisation and patch layout come from
    transformers' PIL processor, fed the resized image so that it does not resize again."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    config = InstructSamForSegmentation.config_class.from_pretrained(release_dir)
    processor = InstructSamProcessor.from_pretrained(release_dir, config)
    picture = _picture(*size, seed=4)
    ours = processor.pixels([picture])
    height, width = smart_resize(*size, factor=32, min_pixels=32 * 32, max_pixels=128 * 128)
    resized = torch.nn.functional.interpolate(torch.from_numpy(picture).permute(2, 0, 1)[None].float(),
                                              size=(height, width), mode="bicubic", antialias=True)
    resized = resized.clamp(0, 255).round()[0].permute(1, 2, 0).numpy().astype(np.uint8)
    reference = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                                         image_std=[0.5] * 3, do_resize=False)
    expected = reference(images=[resized], return_tensors="pt")
    assert ours["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist() == [[1, height // 16, width // 16]]
    assert (ours["pixel_values"] - expected["pixel_values"]).abs().max() <= 2.0 / 255.0 + 1e-5


def test_save_then_load_is_unchanged_and_writes_what_the_release_reads(release_dir, tmp_path):
    model = InstructSamForSegmentation.from_pretrained(release_dir).eval()
    processor = InstructSamProcessor.from_pretrained(release_dir, model.config)
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    processor.tokenizer.save_pretrained(saved)
    shutil.copy(release_dir / "preprocessor_config.json", saved)
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["architectures"] == ["InstructSAMForConditionalGeneration"]
    release_fields = json.loads((release_dir / "config.json").read_text())
    for field in ("max_seg_nums", "out_dim", "seg_encoder", "seg_decoder", "seg_token_index", "seg_start_token_index",
                  "seg_end_token_index", "ref_start_token_index", "ref_end_token_index", "region_token_index",
                  "dice_loss_weight", "bce_loss_weight", "cls_loss_weight", "loss_sample_points"):
        assert config[field] == release_fields[field], field
    assert "sam3_config" not in config
    # The SAM3 config sits in the directory mask_decoder_model names, readable the authors' way.
    assert Path(config["mask_decoder_model"]) == (saved / "sam3").resolve() == Path(config["mm_mask_decoder"])
    sam3 = AutoConfig.from_pretrained(config["mask_decoder_model"])
    assert sam3.model_type == "sam3_video" and sam3.detector_config.detr_decoder_config.num_queries == QUERIES
    assert Qwen3VLConfig.from_pretrained(saved).max_seg_nums == QUERIES
    # The same keys as the release's, less the two SAM3 parts its inference never uses.
    unused = ("model.grounding_model.model.geometry_encoder.", "model.grounding_model.model.text_projection.")
    assert set(_stored(saved)) == {k for k in _stored(release_dir) if not k.startswith(unused)}

    moved = tmp_path / "moved"
    shutil.move(saved, moved)  # the recorded absolute path no longer exists: the sam3/ copy is used
    reloaded = InstructSamForSegmentation.from_pretrained(moved).eval()
    batch = processor([_picture()], ["x"], phrases=[["blue square"]])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_sizes")}
    with torch.no_grad():
        a, b = model(**inputs), reloaded(**inputs)
    for name in ("logits", "query_states", "pred_masks", "pred_logits", "pred_boxes"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_sam3_architecture_falls_back_to_the_published_sizes_and_can_be_overridden(release_dir, tmp_path, capsys):
    """A release directory whose mask_decoder_model is a hub id (not on disk): the published SAM3
    sizes are assumed; with a tiny detector the weights then do not fit, named in one line, and
    `--sam3-config DIR` gives the right architecture."""
    copy = tmp_path / "hub_id"
    shutil.copytree(release_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    sam3_dir = Path(config["mask_decoder_model"])
    config["mask_decoder_model"] = config["mm_mask_decoder"] = "facebook/sam3"
    (copy / "config.json").write_text(json.dumps(config))
    Image.fromarray(_picture()).save(tmp_path / "frame.png")
    argv = ["predict", "--model", str(copy), "--image", str(tmp_path / "frame.png"), "--instruction", "red circle",
            "--out", str(tmp_path / "out")]
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert "published SAM3 detector sizes" in err and "--sam3-config" in err
    assert "out_dim (32) must equal SAM3's DETR width (256)" in err
    code, _, err = _cli(capsys, *argv, "--sam3-config", str(sam3_dir))
    assert code == 0, err


def _broken_copy(release_dir: Path, target: Path) -> Path:
    shutil.copytree(release_dir, target)
    return target


def test_bad_directories_are_one_line_errors(release_dir, tmp_path, capsys):
    Image.fromarray(_picture()).save(tmp_path / "frame.png")

    def predict(model_dir: Path) -> str:
        code, _, err = _cli(capsys, "predict", "--model", str(model_dir), "--image", str(tmp_path / "frame.png"),
                            "--instruction", "red circle", "--out", str(tmp_path / "out"))
        assert code == 2 and err.count("\n") == 1, err
        return err

    truncated = _broken_copy(release_dir, tmp_path / "truncated")
    shard = truncated / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert "damaged or truncated" in predict(truncated) and shard.name in predict(truncated)

    wrong = _broken_copy(release_dir, tmp_path / "wrong_shapes")
    state = load_file(str(wrong / "model-00001-of-00002.safetensors"))
    key = sorted(state)[0]
    state[key] = torch.zeros(*[s + 1 for s in state[key].shape])
    save_file(state, str(wrong / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    message = predict(wrong)
    assert "shape mismatch" in message and key in message
    # The same through eval, before anything is written to --out.
    Image.fromarray(_picture()).save(tmp_path / "images.png")
    (tmp_path / "inst2seg.json").write_text(json.dumps([{"image": "images.png", "height": 90, "width": 140,
                                                          "annotation": [{"text": "red circle"}]}]))
    code, _, err = _cli(capsys, "eval", "--suite", "inst2seg", "--data", str(tmp_path / "inst2seg.json"),
                        "--images", str(tmp_path), "--model", str(wrong), "--out", str(tmp_path / "eval"))
    assert code == 2 and err.count("\n") == 1 and "shape mismatch" in err and key in err
    assert not (tmp_path / "eval" / "run.json").exists()

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(release_dir / name, pickled / name)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    assert "pytorch_model.bin" in predict(pickled) and "never loaded" in predict(pickled)

    missing_shard = _broken_copy(release_dir, tmp_path / "missing_shard")
    (missing_shard / "model-00002-of-00002.safetensors").unlink()
    assert "model-00002-of-00002.safetensors" in predict(missing_shard)


@pytest.mark.parametrize("text, expected", [
    ("{}", "has no text_config"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
])
def test_a_config_that_describes_no_model_fails_before_anything_is_built(release_dir, tmp_path, capsys, text,
                                                                         expected):
    target = _broken_copy(release_dir, tmp_path / "bad_config")
    (target / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=expected):
        InstructSamForSegmentation.from_pretrained(target)
    code, _, err = _cli(capsys, "bench", "--model", str(target), "--repeats", "1")
    assert code == 2 and expected in err and err.count("\n") == 1


@pytest.mark.parametrize("field, value", [
    ("text_config.num_hidden_layers", 100000),
    ("text_config.hidden_size", -4),
    ("vision_config.depth", "deep"),
    ("max_seg_nums", 10 ** 6),
    ("seg_token_index", VOCAB_ROWS + 5),
])
def test_absurd_sizes_are_named_before_anything_is_allocated(release_dir, tmp_path, field, value):
    target = _broken_copy(release_dir, tmp_path / "absurd")
    config = json.loads((target / "config.json").read_text())
    node = config
    *parents, last = field.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=field.replace(".", r"\.")):
        InstructSamForSegmentation.from_pretrained(target)


@pytest.mark.parametrize("content, expected", [
    ({"size": {"shortest_edge": 1024, "longest_edge": -5}}, "max_pixels must be a positive integer"),
    ({"image_std": [0.5, 0.0, 0.5]}, "image_std must be three numbers > 0"),
    ("not json", "not valid JSON"),
])
def test_a_bad_preprocessor_config_is_named(release_dir, tmp_path, content, expected):
    target = _broken_copy(release_dir, tmp_path / "bad_preprocessor")
    text = content if isinstance(content, str) else json.dumps(content)
    (target / "preprocessor_config.json").write_text(text)
    with pytest.raises(CheckpointError, match=expected):
        InstructSamProcessor.from_pretrained(target)


def test_read_only_frames_are_taken_without_a_warning():
    """Frames decoded in place from a ROS message or a bag are read-only arrays."""
    import warnings

    picture = _picture(30, 40)
    picture.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = image_tensor(picture)
    assert torch.equal(tensor.permute(1, 2, 0), torch.from_numpy(picture.copy()))
