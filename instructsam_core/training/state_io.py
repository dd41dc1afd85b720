"""Saving optimizer (and other) state without pickle: tensors in safetensors, the rest in JSON.

Why: `torch.save`/`torch.load` run pickle, which executes code from the file; a checkpoint from
someone else must never be able to do that. Any state dict built from dicts, lists, tuples,
tensors, numbers, strings, bools and None (AdamW's `state_dict()` is one) is split into a flat
{key: tensor} map for safetensors and a JSON skeleton in which each tensor is a reference.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_INT_KEYS = "__int_keys__"


def flatten_state(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split `state` into ({key: tensor}, JSON-able skeleton)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            key = path or "root"
            tensors[key] = value.detach().cpu().contiguous()
            return {_TENSOR: key}
        if isinstance(value, dict):
            int_keys = all(isinstance(k, int) and not isinstance(k, bool) for k in value) and bool(value)
            if not int_keys and not all(isinstance(k, str) for k in value):
                raise TypeError(f"state at {path!r} has keys that are neither all str nor all int")
            node = {str(k): walk(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
            return {_INT_KEYS: node} if int_keys else node
        if isinstance(value, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot store {type(value).__name__} at {path!r} without pickle")

    return tensors, walk(state, "")


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """Inverse of `flatten_state`."""

    def build(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {_TENSOR}:
                return tensors[node[_TENSOR]]
            if set(node) == {_TUPLE}:
                return tuple(build(v) for v in node[_TUPLE])
            if set(node) == {_INT_KEYS}:
                return {int(k): build(v) for k, v in node[_INT_KEYS].items()}
            return {k: build(v) for k, v in node.items()}
        if isinstance(node, list):
            return [build(v) for v in node]
        return node

    return build(skeleton)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_state(state: Any, directory: Path, name: str) -> None:
    """Write `name.safetensors` + `name.json` into `directory` (fsynced)."""
    tensors, skeleton = flatten_state(state)
    tensor_path = directory / f"{name}.safetensors"
    save_file(tensors, str(tensor_path))
    _fsync_file(tensor_path)
    json_path = directory / f"{name}.json"
    json_path.write_text(json.dumps(skeleton), encoding="utf-8")
    _fsync_file(json_path)


def load_state(directory: Path, name: str) -> Any:
    tensors = load_file(str(directory / f"{name}.safetensors"))
    skeleton = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    return unflatten_state(tensors, skeleton)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file, fsynced (tensors moved to CPU and made contiguous)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    _fsync_file(path)


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    _fsync_file(path)
