"""One module per `instructsam` subcommand; each exposes `register(subparsers)`."""
from __future__ import annotations

from pathlib import Path

SAM3_CONFIG_HELP = (
    "directory holding SAM3's config.json (sam3 or sam3_video): overrides where SAM3's architecture comes "
    "from (by default: the config's mask_decoder_model if it is a local directory, else the model's own sam3/ "
    "copy, else the published SAM3 sizes)"
)


def add_sam3_config_argument(parser) -> None:
    parser.add_argument("--sam3-config", type=Path, default=None, metavar="DIR", help=SAM3_CONFIG_HELP)


# configuration.INFERENCE_LAYOUTS, repeated so that parsing arguments imports no torch (a test checks both agree).
INFERENCE_LAYOUTS = ("release", "trained")
INFERENCE_LAYOUT_HELP = (
    "positions and attention masks at inference: 'release' = as the authors' inference runs (what their "
    "published numbers were measured with), 'trained' = as the weights were trained (M-RoPE, causal prompt). "
    "Default: the model's config.json (release checkpoints: release; models trained here: trained)"
)


def add_inference_layout_argument(parser) -> None:
    parser.add_argument("--inference-layout", choices=INFERENCE_LAYOUTS, default=None, help=INFERENCE_LAYOUT_HELP)
