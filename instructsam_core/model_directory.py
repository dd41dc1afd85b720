"""Reading a model directory's config.json and weight files before anything is built.

A model directory is what the authors' `save_pretrained` writes (reference-design.md, "The released
checkpoint as written"): a Qwen3-VL config.json with InstructSAM's fields, safetensors weights
(one file or shards with an index), tokenizer files and preprocessor_config.json; SAM3's config
comes from `sam3_config.resolve_sam3_config`, and `configuration.load_model_config` puts the two
together. Everything a config asks for is checked against sane bounds first, so a bad file is a
one-line error naming the field - never a model of random size allocated until the kernel kills
the process.

Directories written by earlier versions of this project (`model_type: instructsam`, with the SAM3
config inline and other field names) are translated on reading: they keep working, and are saved
in the release's layout.
"""
from __future__ import annotations

import json
from pathlib import Path

from instructsam_core.errors import CheckpointError

LEGACY_MODEL_TYPE = "instructsam"
# Field names of this project's earlier config.json -> the release's names.
_LEGACY_FIELDS = {
    "num_queries_per_phrase": "max_seg_nums",
    "projector_dim": "out_dim",
    "seg_token_id": "seg_token_index",
    "mask_start_token_id": "seg_start_token_index",
    "mask_end_token_id": "seg_end_token_index",
    "ref_start_token_id": "ref_start_token_index",
    "ref_end_token_id": "ref_end_token_index",
}

# Upper bounds of what a config may ask for: far above any published Qwen3-VL or SAM3 size, far
# below what would exhaust a machine by a typo. (field path, lower, upper)
_TEXT_BOUNDS = (
    ("vocab_size", 1, 1 << 21),
    ("hidden_size", 1, 32768),
    ("intermediate_size", 1, 131072),
    ("num_hidden_layers", 1, 256),
    ("num_attention_heads", 1, 512),
)
_VISION_BOUNDS = (
    ("depth", 1, 256),
    ("hidden_size", 1, 16384),
    ("intermediate_size", 1, 65536),
    ("num_heads", 1, 512),
    ("patch_size", 1, 1024),
    ("out_hidden_size", 1, 32768),
)
_TOP_BOUNDS = (("max_seg_nums", 1, 1000), ("out_dim", 1, 16384), ("max_phrase_tokens", 1, 4096))
_SAM3_BOUNDS = (
    ("vision_config.backbone_config.hidden_size", 1, 16384),
    ("vision_config.backbone_config.intermediate_size", 1, 65536),
    ("vision_config.backbone_config.num_hidden_layers", 1, 256),
    ("vision_config.backbone_config.image_size", 14, 8192),
    ("vision_config.backbone_config.patch_size", 1, 1024),
    ("vision_config.fpn_hidden_size", 1, 16384),
    ("detr_encoder_config.hidden_size", 1, 16384),
    ("detr_encoder_config.num_layers", 1, 256),
    ("detr_decoder_config.hidden_size", 1, 16384),
    ("detr_decoder_config.num_layers", 1, 256),
    ("mask_decoder_config.hidden_size", 1, 16384),
)
TOKEN_INDEX_FIELDS = ("seg_token_index", "seg_start_token_index", "seg_end_token_index", "ref_start_token_index",
                      "ref_end_token_index", "region_token_index")


def _lookup(raw: dict, dotted: str):
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _check_int(value, name: str, low: int, high: int, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{where}: {name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise CheckpointError(f"{where}: {name} = {value} is outside the sane range [{low}, {high}]")


def check_model_sizes(raw: dict, where: str) -> None:
    """Reject a config.json that does not describe a model, or asks for absurd sizes, naming the field."""
    for section, bounds in (("text_config", _TEXT_BOUNDS), ("vision_config", _VISION_BOUNDS)):
        sub = raw.get(section)
        if not isinstance(sub, dict):
            raise CheckpointError(
                f"{where} does not describe an InstructSAM model: it has no {section} "
                "(a Qwen3-VL config with text_config and vision_config is expected)"
            )
        for name, low, high in bounds:
            if name not in sub:
                raise CheckpointError(f"{where} does not describe an InstructSAM model: {section}.{name} is missing")
            _check_int(sub[name], f"{section}.{name}", low, high, where)
    for name, low, high in _TOP_BOUNDS:
        if name in raw:
            _check_int(raw[name], name, low, high, where)
    vocab = raw["text_config"]["vocab_size"]
    for name in TOKEN_INDEX_FIELDS:
        if raw.get(name) is not None:
            _check_int(raw[name], name, 0, vocab - 1, where)


def check_sam3_sizes(raw: dict, where: str) -> None:
    """Bounds of a SAM3 detector config (fields that are absent take the published sizes)."""
    for dotted, low, high in _SAM3_BOUNDS:
        value = _lookup(raw, dotted)
        if value is not None:
            _check_int(value, dotted, low, high, where)


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object (a config): unreadable, invalid or another JSON value
    is a one-line CheckpointError."""
    try:
        raw = json.loads(path.read_text())
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return raw


def translate_legacy(raw: dict) -> tuple[dict, dict | None]:
    """An earlier config.json of this project -> the release's fields, plus its inline SAM3 config.

    Those models were trained with the presence token in SAM3's decoder and bare phrase prompts.
    Every model this project wrote before `inference_layout` existed was trained and run in the
    "trained" layout; the release writes none of this project's fields (`max_phrase_tokens` is
    always written here), so such a config.json is told from a release one by that field.
    """
    if raw.get("model_type") != LEGACY_MODEL_TYPE:
        if "max_phrase_tokens" in raw and "inference_layout" not in raw:
            raw = {**raw, "inference_layout": "trained"}
        return raw, None
    out = {_LEGACY_FIELDS.get(key, key): value for key, value in raw.items() if key != "sam3_config"}
    out["model_type"] = "qwen3_vl"
    out.setdefault("presence_token", True)
    out.setdefault("phrase_prompt", "bare")
    out.setdefault("inference_layout", "trained")
    return out, raw.get("sam3_config")


def check_weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory, each with a readable, complete header.

    Pickled weights (pytorch_model.bin, *.pt) are never loaded: they can run code when unpickled.
    """
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{index} is not a valid safetensors index ({error})") from None
        missing = [name for name in shards if not (model_dir / name).is_file()]
        if missing:
            raise CheckpointError(f"{model_dir}: shards named in model.safetensors.index.json are missing: "
                                  + ", ".join(missing))
    if not files:
        pickled = [p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        if pickled:
            raise CheckpointError(
                f"{model_dir} holds only pickled weights ({', '.join(sorted(pickled))}); they are never loaded "
                "(unpickling can run code): convert them to safetensors"
            )
        raise CheckpointError(f"{model_dir} holds no *.safetensors weights")
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own error type for damaged files
            raise CheckpointError(f"{path} is damaged or truncated ({str(error).splitlines()[0]})") from None
    return files


__all__ = ["check_weight_files", "check_model_sizes", "check_sam3_sizes", "translate_legacy",
           "TOKEN_INDEX_FIELDS"]
