"""What a run keeps on disk: its checkpoints (saved, verified, resumed) and its final model.

A checkpoint holds the trainable tensors and the optimizer state (safetensors + JSON, never
pickle), the step, the log history and the optimizer's parameter names per group; it is written
atomically by `CheckpointManager`. Resuming verifies it against its manifest and reads everything
before loading anything; a damaged one is reported and the next older one tried. Weights that are
not finite never become a checkpoint or `final/`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from instructsam_core.errors import UserError
from instructsam_core.sam3_config import record_sam3_location
from instructsam_core.training import model_setup
from instructsam_core.training.checkpoint import STATE_FILE, CheckpointDamaged, CheckpointManager, verify
from instructsam_core.training.state_io import flatten_state, fsync_dir, load_state, save_state, save_tensors, write_json


class NonFiniteTraining(UserError):
    """The loss, the outputs, the gradients or the weights stopped being finite numbers."""


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN or an infinity, else None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def newest_checkpoint_note(checkpoints: CheckpointManager) -> str:
    newest = checkpoints.latest()
    if newest is None:
        return "no checkpoint was written before it"
    return f"the newest checkpoint is {newest.name}; fix the recipe or the data before training again"


def save_checkpoint(accelerator, checkpoints: CheckpointManager, model, optimizer, step: int, history: list,
                    group_names: list[list[str]], fingerprint: str) -> None:
    """Write checkpoint `step` (main process) after checking every trainable weight is finite."""
    accelerator.wait_for_everyone()
    # Every rank holds the same weights, so every rank reaches the same verdict (none waits alone).
    trainable = model_setup.trainable_state(accelerator.unwrap_model(model))
    bad = first_non_finite(trainable)
    if bad is not None:
        raise NonFiniteTraining(f"step {step}: the weight {bad} is not finite; no checkpoint was written "
                                f"({newest_checkpoint_note(checkpoints)})")
    if accelerator.is_main_process:

        def write(directory: Path) -> None:
            save_tensors(trainable, directory / "trainable.safetensors")
            save_state(optimizer.state_dict(), directory, "optimizer")
            write_json(directory / STATE_FILE, {
                "step": step, "fingerprint": fingerprint, "history": history,
                "group_names": [[model_setup.plain_name(n) for n in names] for names in group_names],
            })

        checkpoints.save(step, write)
    accelerator.wait_for_everyone()


def resume(checkpoints: CheckpointManager, model, optimizer, group_names, total_steps: int, is_main: bool,
           fingerprint: str) -> tuple[int, list]:
    """Load the newest intact checkpoint -> (step, history); a damaged one is reported and the next
    older tried; (0, []) when there is none."""
    found = checkpoints.list()
    damaged = []
    for _, path in reversed(found):
        try:
            start_step, history = load_checkpoint(path, model, optimizer, group_names, fingerprint)
        except CheckpointDamaged as error:
            damaged.append(f"{path.name}: {error}")
            if is_main:
                print(f"checkpoint {path} is damaged ({error}); trying an older one", flush=True)
            continue
        if is_main:
            note = " (the newest intact one)" if damaged else ""
            print(f"resuming from {path}{note} (step {start_step} of {total_steps})", flush=True)
        return start_step, history
    if damaged:
        raise UserError(f"no intact checkpoint to resume from in {checkpoints.root} ({'; '.join(damaged)}); "
                        "delete the damaged ones to start from step 0, or choose another --output")
    return 0, []


def load_checkpoint(path: Path, model, optimizer, group_names, fingerprint: str) -> tuple[int, list]:
    """Verify `path` against its manifest, read and check everything, then load it.
    Damage of any kind is a `CheckpointDamaged`; a checkpoint of another run a `UserError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    verify(path, required=("trainable.safetensors", "optimizer.safetensors", "optimizer.json", STATE_FILE))
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointDamaged(f"{STATE_FILE} is not valid JSON") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) \
            or not isinstance(state.get("history", []), list):
        raise CheckpointDamaged(f"{STATE_FILE} lacks its step or history")
    if state.get("fingerprint") != fingerprint:
        raise UserError(f"checkpoint {path} was written by another recipe; resume with the same recipe")
    names = [[model_setup.plain_name(n) for n in group] for group in group_names]
    if state.get("group_names") != names:
        raise UserError(f"checkpoint {path}: optimizer groups do not match the model's parameters")
    try:
        trainable = load_file(str(path / "trainable.safetensors"))
        optimizer_state = load_state(path, "optimizer")
    except (SafetensorError, OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointDamaged(f"cannot read its tensors ({str(error).splitlines()[0][:200]})") from None
    bad = first_non_finite(trainable)
    if bad is not None:
        raise CheckpointDamaged(f"the weight {bad} holds NaN or infinite values")
    optimizer_tensors, _ = flatten_state(optimizer_state)
    bad = first_non_finite(optimizer_tensors)
    if bad is not None:
        raise CheckpointDamaged(f"the optimizer state {bad} holds NaN or infinite values")
    try:
        model_setup.load_trainable_state(model, trainable)
    except UserError as error:
        raise CheckpointDamaged(str(error)) from None
    try:
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as error:
        raise CheckpointDamaged(f"its optimizer state does not fit the model ({str(error)[:200]})") from None
    return int(state["step"]), list(state.get("history", []))


def write_final(output: Path, model, init_dir: Path, is_lora: bool, merge_lora: bool) -> None:
    """OUTPUT/final: a complete model directory (LoRA: merged; the adapter goes to OUTPUT/adapter)."""
    if is_lora:
        from instructsam_core.training.lora import save_adapter

        publish(output / "adapter", lambda d: save_adapter(model, d))
        if not merge_lora:
            return
        model = model.merge_and_unload()

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        model_setup.copy_model_side_files(init_dir, directory)

    publish(output / "final", write)


def publish(target: Path, write) -> None:
    """Write a directory next to `target` and rename it into place (replacing an older one)."""
    temporary = target.parent / f".tmp-{target.name}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    write(temporary)
    fsync_dir(temporary)
    if target.exists():
        aside = target.parent / f".old-{target.name}"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(target, aside)
        os.rename(temporary, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(temporary, target)
    record_sam3_location(target)  # a model directory records its SAM3 config by absolute path
    fsync_dir(target.parent)
