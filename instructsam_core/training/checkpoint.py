"""Atomic training checkpoints: a checkpoint directory either exists complete or not at all.

Layout of `OUTPUT/checkpoints/step-00000100/`:
    trainable.safetensors   every trainable parameter, by name (LoRA + fully trained modules)
    optimizer.safetensors + optimizer.json   optimizer state (state_io: no pickle)
    trainer_state.json      step, epoch, data position, loss history, recipe fingerprint

Everything is written into a hidden temporary sibling, fsynced, and renamed into place; the
rename is atomic, so a kill at any moment leaves either the previous checkpoints or the new one,
never a half-written one that would load. Stale temporaries are removed on the next start.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from instructsam_core.training.state_io import fsync_dir

_STEP_DIR = re.compile(r"^step-(\d{8})$")
TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.json"


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
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir() and (child / STATE_FILE).is_file():
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
