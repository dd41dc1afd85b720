"""Where models come from: a local directory, or `default` for the model embedded in the package.

Nothing is ever downloaded: a path that is not a local model directory is an error.
"""
from __future__ import annotations

from pathlib import Path

from instructsam_core.errors import CheckpointError

DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """Map `default` to the embedded model and check that a directory looks like a model."""
    if str(name_or_path) == DEFAULT_MODEL_NAME:
        path = DEFAULT_MODEL_DIR
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"the embedded default model is not installed at {path}; "
                "pass --model DIR (e.g. one written by `instructsam tiny --out DIR`)"
            )
        return path
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise CheckpointError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory (a model is a directory with config.json and *.safetensors)")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a model directory: config.json is missing")
    return path
