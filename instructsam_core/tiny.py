"""Small offline models: a tokenizer with Qwen's special tokens, tiny and full-size configs.

Nothing can be downloaded on our machines, so tests, CI, the ROS tests and the benchmarks use
models built here: `write_tiny_model` writes a complete, loadable model directory (config,
safetensors, tokenizer, preprocessor config) with random weights; `full_config` describes the
real InstructSAM-2B architecture (for timing with random weights).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from instructsam_core import tokens as T
from instructsam_core.configuration import InstructSamConfig

# Text the tiny tokenizer learns its merges from: the prompt templates and the vocabulary of
# instructions about everyday scenes and the synthetic shapes data. Any other text still
# encodes (byte-level fallback), just in more tokens.
_CORPUS_WORDS = """
please output the segmentation mask segment can you in this image what which where is are there
all every each a an of to on at by for with and or but not no none any some one two three four
five six seven eight nine ten first second third fourth fifth last left right top bottom middle
center above below next near far behind front inside outside between largest smallest biggest
big small large tiny medium tall short long wide narrow round square circle circles squares
triangle triangles star stars ring rings ellipse ellipses rectangle rectangles diamond diamonds
hexagon hexagons cross crosses heart hearts shape shapes object objects thing things something
red green blue yellow orange purple pink brown black white gray grey cyan magenta dark light
bright person people man woman child dog cat car bus truck bicycle bottle cup chair table
plate bowl apple banana orange phone laptop book box bag ball wheel door window robot arm hand
cube block tool could used as would be that has have like most least color colour colored
it them they from other than same different closest furthest upper lower side corner edge
""".split()


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen's special tokens and InstructSAM's added ones.

    Trained in milliseconds on a fixed corpus, so it is the same on every machine. Every run of
    ordinary text gets a leading space before it is split (`add_prefix_space`), so a word has the
    same tokens wherever it stands: "blue" after ", " in a multi-phrase instruction and "blue"
    right after `<|object_ref_start|>` in the answer. Without it the two were different tokens,
    and a small model trained from scratch rarely learned to copy a phrase into its answer (the
    processor's `decode` takes the space off again).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    special = list(T.QWEN_SPECIAL_TOKENS) + list(T.ADDED_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(_CORPUS_WORDS[i : i + 12]) for i in range(0, len(_CORPUS_WORDS), 12)]
    corpus += [" " + word for word in _CORPUS_WORDS] * 2
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=T.IM_END,
        pad_token=T.END_OF_TEXT,
        additional_special_tokens=[t for t in special if t not in (T.IM_END, T.END_OF_TEXT)],
    )


def _sam3_config(hidden: int, image_size: int, vit_layers: int, detr_layers: int, heads: int) -> dict:
    """SAM3 detector config with every width equal to `hidden` (the projector width)."""
    grid = image_size // 14
    return {
        "vision_config": {
            "model_type": "sam3_vision_model",
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": hidden,
                "intermediate_size": hidden * 2,
                "num_hidden_layers": vit_layers,
                "num_attention_heads": heads,
                "image_size": image_size,
                "patch_size": 14,
                "window_size": 4,
                "global_attn_indexes": [vit_layers - 1],
                "pretrain_image_size": 56,
            },
            "fpn_hidden_size": hidden,
            "backbone_feature_sizes": [[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
        },
        "geometry_encoder_config": {"model_type": "sam3_geometry_encoder", "hidden_size": hidden, "num_layers": 1,
                                    "num_attention_heads": heads, "intermediate_size": hidden * 2},
        "detr_encoder_config": {"model_type": "sam3_detr_encoder", "hidden_size": hidden, "num_layers": detr_layers,
                                "num_attention_heads": heads, "intermediate_size": hidden * 2},
        "detr_decoder_config": {"model_type": "sam3_detr_decoder", "hidden_size": hidden, "num_layers": detr_layers,
                                "num_attention_heads": heads, "intermediate_size": hidden * 2},
        "mask_decoder_config": {"model_type": "sam3_mask_decoder", "hidden_size": hidden, "num_attention_heads": heads},
        "text_config": {"model_type": "clip_text_model", "hidden_size": hidden, "intermediate_size": hidden * 2,
                        "num_hidden_layers": 1, "num_attention_heads": heads, "projection_dim": hidden},
    }


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    vision_hidden: int = 32,
    vision_depth: int = 1,
    sam_hidden: int = 32,
    sam_image_size: int = 112,
    sam_vit_layers: int = 2,
    sam_detr_layers: int = 1,
    num_queries: int = 10,
) -> InstructSamConfig:
    """A random-init-sized InstructSAM config whose token ids come from `tokenizer`.

    Shapes follow the real model's rules: head_dim = text_hidden / text_heads, the M-RoPE
    sections sum to head_dim / 2, every SAM3 width equals the projector width.
    """
    head_dim = text_hidden // text_heads
    half = head_dim // 2
    sections = [half - 2 * (half // 3), half // 3, half // 3]
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in _TOKEN_FIELDS.items()}
    return InstructSamConfig(
        text_config={
            "model_type": "qwen3_vl_text",
            "vocab_size": len(tokenizer),
            "hidden_size": text_hidden,
            "intermediate_size": text_hidden * 2,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads,
            "num_key_value_heads": max(1, text_heads // 2),
            "head_dim": head_dim,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections,
                                "mrope_interleaved": True},
        },
        vision_config={
            "model_type": "qwen3_vl_vision",
            "depth": vision_depth,
            "hidden_size": vision_hidden,
            "intermediate_size": vision_hidden * 2,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": text_hidden,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
        },
        sam3_config=_sam3_config(sam_hidden, sam_image_size, sam_vit_layers, sam_detr_layers, heads=2),
        out_dim=sam_hidden,
        max_seg_nums=num_queries,
        tie_word_embeddings=True,
        # A model of this project: trained (and so run) in the training forward's layout.
        inference_layout="trained",
        **ids,
    )


# Config field -> token, for the ids a model needs from its tokenizer (InstructSAM's fields under
# the release's names).
_TOKEN_FIELDS = {
    "image_token_id": T.IMAGE_PAD,
    "video_token_id": T.VIDEO_PAD,
    "vision_start_token_id": T.VISION_START,
    "vision_end_token_id": T.VISION_END,
    "seg_token_index": T.SEG,
    "seg_start_token_index": T.MASK_START,
    "seg_end_token_index": T.MASK_END,
    "ref_start_token_index": T.REF_START,
    "ref_end_token_index": T.REF_END,
    "region_token_index": T.REGION,
    "im_end_token_id": T.IM_END,
}


def full_config(tokenizer: PreTrainedTokenizerFast | None = None) -> InstructSamConfig:
    """The InstructSAM-2B architecture (Qwen3-VL-2B + SAM3), for timing with random weights."""
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in _TOKEN_FIELDS.items()} if tokenizer else {}
    # Qwen's own ids, and the four added tokens on spare rows after them, in the release's order.
    defaults = {"region_token_index": 151669, "seg_token_index": 151670, "seg_start_token_index": 151671,
                "seg_end_token_index": 151672, "ref_start_token_index": 151646, "ref_end_token_index": 151647,
                "im_end_token_id": 151645}
    return InstructSamConfig(
        text_config={
            "model_type": "qwen3_vl_text", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
            "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
            "max_position_embeddings": 262144,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                "mrope_interleaved": True},
        },
        vision_config={
            "model_type": "qwen3_vl_vision", "depth": 24, "hidden_size": 1024, "intermediate_size": 4096,
            "num_heads": 16, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "out_hidden_size": 2048, "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17],
        },
        tie_word_embeddings=True,
        **{**defaults, **ids},
    )


def write_tiny_model(out_dir: str | Path, seed: int = 0, max_pixels: int = 128 * 128, **config_overrides) -> Path:
    """Write a complete random-init tiny model directory and return its path."""
    from instructsam_core.modeling import InstructSamForSegmentation
    from instructsam_core.processing import write_preprocessor_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer, **config_overrides)
    torch.manual_seed(seed)
    model = InstructSamForSegmentation(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_preprocessor_config(out, patch_size=16, merge_size=2, min_pixels=32 * 32, max_pixels=max_pixels)
    (out / "README.md").write_text(
        "Random-init tiny InstructSAM written by `instructsam tiny` (for tests and demos; it has learned nothing).\n"
        + json.dumps({"seed": seed, **config_overrides}) + "\n"
    )
    return out
