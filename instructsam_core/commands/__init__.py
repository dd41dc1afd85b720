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
