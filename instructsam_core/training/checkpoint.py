"""Atomic training checkpoints: a checkpoint directory either exists complete or not at all.

Layout of `OUTPUT/checkpoints/step-00000100/`:
    trainable.safetensors   every trainable parameter, by name (LoRA + fully trained modules)
    optimizer.safetensors + optimizer.json   optimizer state (state_io: no pickle)
    trainer_state.json      step, epoch, data position, loss history, recipe fingerprint

    manifest.json           size and SHA-256 of every other file (written last)

Everything is written into a hidden temporary sibling, fsynced, and renamed into place; the
rename is atomic, so a kill at any moment leaves either the previous checkpoints or the new one,
never a half-written one that would load. Stale temporaries are removed on the next start.

What a rename cannot protect against (a disk or a copy that truncates, empties or flips bytes
of a published checkpoint, a file deleted or edited by hand) the manifest finds: `verify`
checks every file against it before anything is loaded, and resume falls back to the newest
checkpoint that passes (trainer.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from instructsam_core.errors import UserError
from instructsam_core.training.state_io import fsync_dir, write_json

_STEP_DIR = re.compile(r"^step-(\d{8})$")
TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class CheckpointDamaged(UserError):
    """A checkpoint that fails its manifest or its contents check; the message says what is wrong."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in blocks (hashlib.file_digest: no whole file in memory)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(directory: Path) -> None:
    """manifest.json: size and SHA-256 of every file in `directory` (call after writing them all)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    entries = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    write_json(directory / MANIFEST, {"format": MANIFEST_FORMAT, "files": entries})


def verify(directory: Path, required: tuple[str, ...] = ()) -> None:
    """Raise `CheckpointDamaged` unless every file the manifest lists (and each `required` one)
    is there with its recorded size and SHA-256."""
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointDamaged(f"{MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError
        entries = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise CheckpointDamaged(f"{MANIFEST} is unreadable or not a manifest") from None
    for name in required:
        if name not in entries:
            raise CheckpointDamaged(f"{MANIFEST} does not list {name}")
    for name, (size, sha256) in sorted(entries.items()):
        file = directory / name
        if not file.is_file():
            raise CheckpointDamaged(f"{name} is missing")
        actual = file.stat().st_size
        if actual != size:
            raise CheckpointDamaged(f"{name} is {actual} bytes, the manifest says {size} (truncated or replaced)")
        if file_sha256(file) != sha256:
            raise CheckpointDamaged(f"{name} does not match its SHA-256 in the manifest (damaged bytes)")


class CheckpointManager:
    """Writes, finds and prunes the step checkpoints under one directory."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = max(1, int(keep))

    def path_for(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def remove_stale_temporaries(self) -> None:
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if child.name.startswith(TMP_PREFIX) or child.name.startswith(".old-"):
                shutil.rmtree(child, ignore_errors=True)

    def list(self) -> list[tuple[int, Path]]:
        """Published checkpoints (step-N directories), oldest first. Only published ones exist
        under these names, but one may have been damaged since: see `verify`."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1][1] if found else None

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Call `write(tmp_dir)` to fill a temporary directory, then publish it as step-N."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path_for(step)
        temporary = self.root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
        write(temporary)
        write_manifest(temporary)
        fsync_dir(temporary)
        if final.exists():
            # Re-saving a step (e.g. after a resume): move the old one aside first, because a
            # rename cannot replace a non-empty directory.
            aside = self.root / f".old-{final.name}-{os.getpid()}"
            os.rename(final, aside)
            os.rename(temporary, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(temporary, final)
        fsync_dir(self.root)
        self.prune()
        return final

    def prune(self) -> None:
        found = self.list()
        for _, path in found[: max(0, len(found) - self.keep)]:
            shutil.rmtree(path, ignore_errors=True)
