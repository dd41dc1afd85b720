"""Where SAM3's architecture comes from (the release stores none in config.json).

The authors' code builds SAM3 from `AutoConfig.from_pretrained(config.mask_decoder_model)`: for
the published SAM3 checkpoint that is a `sam3_video` config whose `detector_config` is the image
detector, and `num_queries` is then set to `max_seg_nums`. Nothing may be fetched here, so the
detector's config comes from, in this order:

1. a directory the user names (`--sam3-config DIR`, the ROS parameter `sam3_config`);
2. `mask_decoder_model`, when it names a local directory with a SAM3 config;
3. the copy a model directory written here carries in `sam3/` (the recorded path is absolute and
   may not exist on another machine);
4. the published SAM3 detector's sizes (`published_sam3_config`).

A SAM3 config directory holds a `config.json` of model type `sam3` or `sam3_video`.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import Sam3Config, Sam3VideoConfig

from instructsam_core.errors import CheckpointError
from instructsam_core.model_directory import check_sam3_sizes, read_json_object

# Name of the SAM3 config directory inside a model directory written by this project.
SAM3_SUBDIR = "sam3"

# The published SAM3 image detector (facebook/sam3, reference-design.md "Model"): ViT 1024-d,
# 32 layers, patch 14, 1008x1008 input, windowed attention with 4 global layers; FPN 256-d;
# DETR encoder and decoder of 6 layers, width 256, 8 heads, FFN 2048; mask decoder 256-d.
_PUBLISHED_DETECTOR = {
    "vision_config": {
        "model_type": "sam3_vision_model",
        "backbone_config": {
            "model_type": "sam3_vit_model",
            "hidden_size": 1024,
            "intermediate_size": 4736,
            "num_hidden_layers": 32,
            "num_attention_heads": 16,
            "image_size": 1008,
            "patch_size": 14,
            "window_size": 24,
            "global_attn_indexes": [7, 15, 23, 31],
            "pretrain_image_size": 336,
            "rope_theta": 10000.0,
        },
        "fpn_hidden_size": 256,
        "backbone_feature_sizes": [[288, 288], [144, 144], [72, 72]],
        "scale_factors": [4.0, 2.0, 1.0, 0.5],
    },
    "geometry_encoder_config": {"model_type": "sam3_geometry_encoder", "hidden_size": 256, "num_layers": 3,
                                "num_attention_heads": 8, "intermediate_size": 2048},
    "detr_encoder_config": {"model_type": "sam3_detr_encoder", "hidden_size": 256, "num_layers": 6,
                            "num_attention_heads": 8, "intermediate_size": 2048},
    "detr_decoder_config": {"model_type": "sam3_detr_decoder", "hidden_size": 256, "num_layers": 6,
                            "num_attention_heads": 8, "intermediate_size": 2048, "num_queries": 200},
    "mask_decoder_config": {"model_type": "sam3_mask_decoder", "hidden_size": 256, "num_upsampling_stages": 3,
                            "num_attention_heads": 8},
}


def published_sam3_config() -> Sam3Config:
    """The published SAM3 detector's architecture (used when no SAM3 config is on disk)."""
    return Sam3Config(**json.loads(json.dumps(_PUBLISHED_DETECTOR)))


def read_sam3_config_dir(directory: str | Path) -> Sam3Config:
    """The detector config in `directory/config.json` (`sam3`, or `sam3_video` with a detector_config)."""
    path = Path(directory) / "config.json"
    raw = read_json_object(path)
    kind = raw.get("model_type")
    if kind == "sam3_video":
        raw = raw.get("detector_config")
        if not isinstance(raw, dict):
            raise CheckpointError(f"the sam3_video config {path} has no detector_config")
        kind = raw.get("model_type", "sam3")
    if kind != "sam3":
        raise CheckpointError(f"{path} is not a SAM3 config (model_type {kind!r}; expected 'sam3' or 'sam3_video')")
    check_sam3_sizes(raw, str(path))
    try:
        return Sam3Config(**{k: v for k, v in raw.items() if k not in ("model_type", "transformers_version")})
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"the SAM3 config {path} does not describe a SAM3 detector ({error})") from None


def has_sam3_config(directory: str | Path | None) -> bool:
    return directory is not None and (Path(directory) / "config.json").is_file()


def resolve_sam3_config(
    model_dir: Path, mask_decoder_model: str | None, override: str | Path | None = None
) -> tuple[Sam3Config, str]:
    """The detector config of a model directory and where it came from (see the module docstring)."""
    if override is not None:
        if not has_sam3_config(override):
            raise CheckpointError(f"--sam3-config {override}: no config.json in that directory")
        return read_sam3_config_dir(override), f"the SAM3 config in {override}"
    if mask_decoder_model and has_sam3_config(Path(mask_decoder_model).expanduser()):
        directory = Path(mask_decoder_model).expanduser()
        return read_sam3_config_dir(directory), f"mask_decoder_model {directory}"
    if has_sam3_config(model_dir / SAM3_SUBDIR):
        return read_sam3_config_dir(model_dir / SAM3_SUBDIR), f"{model_dir / SAM3_SUBDIR}"
    return published_sam3_config(), "the published SAM3 detector sizes"


def write_sam3_config_dir(config: Sam3Config, directory: Path) -> Path:
    """Write `config` as the published checkpoint's kind of config (`sam3_video` with a detector_config),
    which the authors' code reads with AutoConfig, and which `read_sam3_config_dir` reads back."""
    directory.mkdir(parents=True, exist_ok=True)
    Sam3VideoConfig(detector_config=config.to_dict()).save_pretrained(directory)
    return directory


def record_sam3_location(model_dir: Path) -> None:
    """Point a model directory's `mask_decoder_model` at its own `sam3/` copy, by absolute path.

    For writers that save into a temporary directory and rename it into place: the path
    `save_pretrained` recorded named the temporary directory.
    """
    config_path = model_dir / "config.json"
    if not (model_dir / SAM3_SUBDIR / "config.json").is_file() or not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    config["mask_decoder_model"] = config["mm_mask_decoder"] = str((model_dir / SAM3_SUBDIR).resolve())
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


__all__ = ["SAM3_SUBDIR", "record_sam3_location", "published_sam3_config", "read_sam3_config_dir", "resolve_sam3_config",
           "write_sam3_config_dir"]
