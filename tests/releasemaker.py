"""A tiny model directory as the authors' release writes it, built from the facts of
reference-design.md ("The released checkpoint as written"), not from this project's save path:
a hand-written Qwen3-VL config.json with the release's fields, a tokenizer whose InstructSAM
tokens were added after Qwen's in the release's order, a `sam3_video` config directory named by
`mask_decoder_model`, and safetensors weights taken from the stock transformers Qwen3-VL and SAM3
modules under the release's key names (SAM3's decoder without any presence_* key, as the release
removed them; lm_head tied, not stored).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Sam3Config,
    Sam3Model,
    Sam3VideoConfig,
)

from instructsam_core import tokens as T

# The tokenizer's ordinary words; their ids are their positions (hand-written expectations below).
WORDS = ["[UNK]", "red", "circle", "blue", "square", "big", "user", "assistant", "find", "the", "circles", ","]
RED, CIRCLE, BLUE, SQUARE, BIG = 1, 2, 3, 4, 5
# Qwen's special tokens follow the words, then the four the release adds, in its order.
QWEN_IDS = {token: len(WORDS) + i for i, token in enumerate(T.QWEN_SPECIAL_TOKENS)}
ADDED = ["<REGION>", "[SEG]", "<|mask_start|>", "<|mask_end|>"]
ADDED_IDS = {token: len(WORDS) + len(T.QWEN_SPECIAL_TOKENS) + i for i, token in enumerate(ADDED)}
VOCAB_ROWS = 64  # Qwen's embedding table has spare rows beyond the tokenizer
HIDDEN, SAM_WIDTH, SAM_SIZE, QUERIES = 64, 32, 112, 10


def _tokenizer() -> PreTrainedTokenizerFast:
    base = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    base.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base, unk_token="[UNK]")
    tokenizer.add_special_tokens({"additional_special_tokens": list(T.QWEN_SPECIAL_TOKENS)})
    tokenizer.add_special_tokens({"additional_special_tokens": ADDED}, replace_extra_special_tokens=False)
    tokenizer.eos_token = T.IM_END
    tokenizer.pad_token = T.END_OF_TEXT
    assert [tokenizer.convert_tokens_to_ids(t) for t in ADDED] == [ADDED_IDS[t] for t in ADDED]
    return tokenizer


def _sam3_detector_config() -> dict:
    grid = SAM_SIZE // 14
    width = SAM_WIDTH
    return {
        "vision_config": {"model_type": "sam3_vision_model",
                          "backbone_config": {"model_type": "sam3_vit_model", "hidden_size": width, "intermediate_size": 2 * width,
                                              "num_hidden_layers": 2, "num_attention_heads": 2,
                                              "image_size": SAM_SIZE, "patch_size": 14, "window_size": 4,
                                              "global_attn_indexes": [1], "pretrain_image_size": 56},
                          "fpn_hidden_size": width,
                          "backbone_feature_sizes": [[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]]},
        "geometry_encoder_config": {"model_type": "sam3_geometry_encoder", "hidden_size": width, "num_layers": 1, "num_attention_heads": 2,
                                    "intermediate_size": 2 * width},
        "detr_encoder_config": {"model_type": "sam3_detr_encoder", "hidden_size": width, "num_layers": 1, "num_attention_heads": 2,
                                "intermediate_size": 2 * width},
        # The published SAM3 has 200 queries; the release sets num_queries = max_seg_nums itself.
        "detr_decoder_config": {"model_type": "sam3_detr_decoder", "hidden_size": width, "num_layers": 2, "num_attention_heads": 2,
                                "intermediate_size": 2 * width, "num_queries": 200},
        "mask_decoder_config": {"model_type": "sam3_mask_decoder", "hidden_size": width, "num_attention_heads": 2},
        "text_config": {"model_type": "clip_text_model", "hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "projection_dim": width},
    }


def _qwen_configs() -> tuple[dict, dict]:
    text = {"model_type": "qwen3_vl_text", "vocab_size": VOCAB_ROWS, "hidden_size": HIDDEN, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "max_position_embeddings": 4096, "eos_token_id": QWEN_IDS[T.IM_END],
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                "mrope_interleaved": True}}
    vision = {"model_type": "qwen3_vl_vision", "depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
              "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": HIDDEN,
              "num_position_embeddings": 256, "deepstack_visual_indexes": [0]}
    return text, vision


def build_release_directory(root: Path, sam3_dir: Path | None = None, seed: int = 0) -> Path:
    """A tiny model directory in the release's layout (see the module docstring)."""
    torch.manual_seed(seed)
    root.mkdir(parents=True)
    sam3_dir = sam3_dir or root.parent / f"{root.name}-sam3"
    detector = Sam3Config(**_sam3_detector_config())
    Sam3VideoConfig(detector_config=detector.to_dict()).save_pretrained(sam3_dir)
    text, vision = _qwen_configs()
    config = {
        "architectures": ["InstructSAMForConditionalGeneration"], "model_type": "qwen3_vl",
        "text_config": text, "vision_config": vision, "tie_word_embeddings": True,
        "image_token_id": QWEN_IDS[T.IMAGE_PAD], "video_token_id": QWEN_IDS[T.VIDEO_PAD],
        "vision_start_token_id": QWEN_IDS[T.VISION_START], "vision_end_token_id": QWEN_IDS[T.VISION_END],
        "max_seg_nums": QUERIES, "out_dim": SAM_WIDTH, "mask_decoder_model": str(sam3_dir),
        "mm_mask_decoder": str(sam3_dir), "seg_encoder": "sam3", "seg_decoder": "sam3",
        "region_token_index": ADDED_IDS["<REGION>"], "seg_token_index": ADDED_IDS["[SEG]"],
        "seg_start_token_index": ADDED_IDS["<|mask_start|>"], "seg_end_token_index": ADDED_IDS["<|mask_end|>"],
        "ref_start_token_index": QWEN_IDS[T.REF_START], "ref_end_token_index": QWEN_IDS[T.REF_END],
        "dice_loss_weight": 0.5, "bce_loss_weight": 2.0, "cls_loss_weight": 1.0, "loss_sample_points": True,
        "dtype": "float32", "transformers_version": "4.57.0",
    }
    (root / "config.json").write_text(json.dumps(config, indent=2))
    # Weights: the stock Qwen3-VL and SAM3 modules under the release's key names.
    state = {k: v for k, v in Qwen3VLForConditionalGeneration(
        Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)).state_dict().items()
        if not k.startswith("lm_head.")}
    detector.detr_decoder_config.num_queries = QUERIES
    for key, value in Sam3Model(detector).state_dict().items():
        if key.startswith("text_encoder.") or ".presence_" in key:
            continue  # the release builds no CLIP text encoder and removed the presence token/head
        state[f"model.grounding_model.model.{key}"] = value
    state["model.mask_queries"] = torch.randn(QUERIES, HIDDEN)
    for projector in ("mask_hidden_fcs", "text_hidden_fcs"):
        state[f"model.{projector}.0.0.weight"] = torch.randn(HIDDEN, HIDDEN) * 0.1
        state[f"model.{projector}.0.0.bias"] = torch.randn(HIDDEN) * 0.1
        state[f"model.{projector}.0.2.weight"] = torch.randn(SAM_WIDTH, HIDDEN) * 0.1
        state[f"model.{projector}.0.2.bias"] = torch.randn(SAM_WIDTH) * 0.1
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, names in shards.items():
        save_file({k: state[k].contiguous() for k in names}, root / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in names})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _tokenizer().save_pretrained(root)
    (root / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessorFast", "patch_size": 16, "merge_size": 2,
        "temporal_patch_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "size": {"shortest_edge": 32 * 32, "longest_edge": 128 * 128}}))
    return root
