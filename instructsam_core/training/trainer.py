"""The training loop, on Hugging Face `accelerate` (DDP under torchrun, DeepSpeed via a config).

What one run does (`instructsam train`):
  1. checks the recipe, reads the data mixture, builds the starting model (a model directory, the
     embedded default, or a scratch model written to OUTPUT/init_model), applies LoRA and the
     freeze policy, groups parameters by learning rate;
  2. checks every training sample (image header and size, masks) before the first step;
     optionally resumes from the newest intact checkpoint in OUTPUT/checkpoints (verified
     against its manifest; a damaged one is reported and skipped): trainable weights, optimizer
     state (safetensors + JSON, never pickle), step; the data order and every random draw are
     functions of (seed, step, micro-batch, rank), so the resumed run computes what the
     uninterrupted one would have;
  3. trains with a tqdm bar (loss terms, ETA) and writes OUTPUT/log.jsonl; outputs, a loss or a
     gradient norm that is not finite stop the run before the update (NonFiniteTraining);
  4. writes OUTPUT/final (a loadable model directory; for LoRA also OUTPUT/adapter) and
     OUTPUT/loss_curve.png.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from instructsam_core.errors import UserError
from instructsam_core.sam3_config import record_sam3_location
from instructsam_core.training import model_setup
from instructsam_core.training.checkpoint import STATE_FILE, CheckpointDamaged, CheckpointManager, verify
from instructsam_core.training.criterion import LossWeights, SetCriterion
from instructsam_core.training.dataset import InstructSegDataset, TrainingCollator
from instructsam_core.training.matcher import HungarianMatcher
from instructsam_core.training.mixture import build_mixture, load_mixture_file, parse_mixture
from instructsam_core.training.recipe import Recipe
from instructsam_core.training.sampler import StepBatchSampler, lr_factor, steps_for_epochs
from instructsam_core.training.state_io import (
    flatten_state,
    fsync_dir,
    load_state,
    save_state,
    save_tensors,
    write_json,
)

LOSS_KEYS = ("loss", "text", "mask_bce", "mask_dice", "score", "box_l1", "box_giou", "semantic", "presence", "outside",
             "region")
LOG_FILE = "log.jsonl"
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw",
                    "sam_pixel_values")


def _mixed_precision(choice: str) -> str:
    if choice == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if choice in ("bf16", "fp16") and not torch.cuda.is_available():
        raise UserError(f"precision {choice} needs a GPU here; use precision: fp32 (or auto) on CPU")
    return {"fp32": "no"}.get(choice, choice)


def mask_grid_size(config) -> int:
    """Side of SAM3's square mask-logit grid: its patch grid times the finest FPN scale (288 at full size)."""
    vision = config.sam3_config.vision_config
    grid = int(vision.backbone_config.image_size) // int(vision.backbone_config.patch_size)
    return int(round(grid * max(vision.scale_factors)))


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Seed of every random draw in one micro-step (dropout, point sampling)."""
    return (seed * 1_000_003 + step * 1009 + micro * 101 + rank * 7919 + 12345) % (2**63 - 1)


class NonFiniteTraining(UserError):
    """The loss, the outputs, the gradients or the weights stopped being finite numbers."""


def _first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN or an infinity, else None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _newest_checkpoint_note(checkpoints: CheckpointManager) -> str:
    newest = checkpoints.latest()
    if newest is None:
        return "no checkpoint was written before it"
    return f"the newest checkpoint is {newest.name}; fix the recipe or the data before training again"


def read_log(path: Path) -> list[dict]:
    """The entries of log.jsonl; a line that is not a whole JSON object (the last one, cut off by
    a kill during its write) is left out."""
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append(entry)
    return entries


class Trainer:
    """One training run; see the module docstring. `run()` returns a summary dict."""

    def __init__(
        self,
        recipe: Recipe,
        data_root: str | Path,
        output: str | Path,
        resume: bool = False,
        progress: bool = True,
        kill_after_step: int | None = None,
    ) -> None:
        self.recipe = recipe
        self.data_root = Path(data_root)
        self.output = Path(output)
        self.resume = resume
        self.progress = progress
        self.kill_after_step = kill_after_step
        self.unusable_samples = 0

    # ------------------------------------------------------------------ setup
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        recipe = self.recipe
        plugin = None
        if recipe["deepspeed"]:
            from accelerate import DeepSpeedPlugin

            config_path = recipe.resolve(recipe["deepspeed"])
            if not config_path.is_file():
                raise UserError(f"recipe: deepspeed config {config_path} does not exist")
            plugin = DeepSpeedPlugin(hf_ds_config=str(config_path),
                                     gradient_accumulation_steps=recipe["batch"]["grad_accum"],
                                     gradient_clipping=recipe["optimizer"]["max_grad_norm"] or 0.0)
        # Some parameters take no part in a given step (e.g. SAM3's stock query table, kept only
        # so that released weights load), so DDP must look for unused ones.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
        return Accelerator(
            # Without a GPU, `cpu=True` is what makes accelerate treat torchrun workers as a
            # multi-process (gloo) job instead of independent single processes.
            cpu=not torch.cuda.is_available(),
            mixed_precision=_mixed_precision(recipe["precision"]),
            gradient_accumulation_steps=recipe["batch"]["grad_accum"],
            deepspeed_plugin=plugin,
            kwargs_handlers=[ddp],
        )

    def _prepare_output(self, accelerator) -> CheckpointManager:
        checkpoints = CheckpointManager(self.output / "checkpoints", keep=self.recipe["checkpoint"]["keep"])
        recipe_copy = self.output / "recipe.yaml"
        if accelerator.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)
            has_run = checkpoints.latest() is not None or (self.output / "final").exists()
            if has_run and not self.resume:
                raise UserError(f"{self.output} already holds a training run; pass --resume to continue it "
                                "or choose another --output")
            if recipe_copy.is_file() and self.resume:
                previous = yaml.safe_load(recipe_copy.read_text())
                fingerprint = (previous or {}).get("fingerprint")
                if fingerprint and fingerprint != self.recipe.fingerprint():
                    raise UserError(f"{self.output} was trained with another recipe (fingerprint {fingerprint}); "
                                    "resume with the same recipe or choose another --output")
            checkpoints.remove_stale_temporaries()
            payload = {"fingerprint": self.recipe.fingerprint(), "recipe_file": str(self.recipe.path),
                       "data_root": str(self.data_root), "recipe": self.recipe.values}
            recipe_copy.write_text(yaml.safe_dump(payload, sort_keys=False))
        accelerator.wait_for_everyone()
        return checkpoints

    def _data(self, mask_size: int, accelerator):
        recipe = self.recipe
        data = recipe["data"]
        if isinstance(data["mixture"], str):
            entries = load_mixture_file(recipe.resolve(data["mixture"]))
        else:
            entries = parse_mixture(data["mixture"], f"{recipe.path}: data.mixture")
        records, reports = build_mixture(entries, self.data_root, skip_bad=data["skip_bad"], seed=recipe["seed"],
                                         style=data["instruction_style"],
                                         instseg_single_fraction=data["instseg_single_phrase_fraction"])
        if accelerator.is_main_process:
            for name, report in reports.items():
                print(f"data {name}: {report.summary()}", flush=True)
        records = self._check_records(records, accelerator)
        return InstructSegDataset(records, mask_size, skip_bad=data["skip_bad"])

    def _check_records(self, records: list, accelerator) -> list:
        """Check every distinct sample before training (dataset.check_record), each process a
        share of them: an unusable one stops the run now, naming it, instead of when it is
        drawn hours later; with data.skip_bad (--skip-bad) unusable ones are left out and counted."""
        from instructsam_core.training.dataset import check_record

        unique = list({id(record): record for record in records}.values())
        rank, world = accelerator.process_index, accelerator.num_processes
        share = range(rank, len(unique), world)
        if accelerator.is_main_process and self.progress:
            from tqdm import tqdm

            share = tqdm(share, desc="check data", unit="sample", dynamic_ncols=True, leave=False)
        found = [(index, reason) for index in share if (reason := check_record(unique[index])) is not None]
        if world > 1:
            from accelerate.utils import gather_object

            found = gather_object(found)
        found.sort()
        self.unusable_samples = len(found)
        if not found:
            return records
        first = found[0][1]
        if not self.recipe["data"]["skip_bad"]:
            raise UserError(f"{len(found)} of {len(unique)} training samples cannot be used (first: {first}); "
                            "fix them, or pass --skip-bad to leave them out")
        bad = {id(unique[index]) for index, _ in found}
        kept = [record for record in records if id(record) not in bad]
        if not kept:
            raise UserError(f"none of the {len(unique)} training samples can be used (first: {first})")
        if accelerator.is_main_process:
            print(f"left out {len(found)} of {len(unique)} training samples that cannot be used (first: {first})",
                  flush=True)
        return kept

    # ------------------------------------------------------------------- run
    def run(self) -> dict:
        recipe = self.recipe
        if recipe["threads"]:
            torch.set_num_threads(int(recipe["threads"]))
        accelerator = self._accelerator()
        rank, world = accelerator.process_index, accelerator.num_processes
        checkpoints = self._prepare_output(accelerator)

        from instructsam_core.modeling import InstructSamForSegmentation
        from instructsam_core.processing import InstructSamProcessor

        if accelerator.is_main_process:
            init_dir = model_setup.init_model_dir(recipe, self.output, True)
        accelerator.wait_for_everyone()
        init_dir = model_setup.init_model_dir(recipe, self.output, False)
        model = InstructSamForSegmentation.from_pretrained(init_dir, dtype=torch.float32)
        model.config.inference_layout = "trained"  # trained by the training forward's layout: saved so
        processor = InstructSamProcessor.from_pretrained(init_dir, model.config)
        mask_size = mask_grid_size(model.config)
        lora = recipe["trainable"]["lora"]
        if lora is not None:
            model = model_setup.apply_lora(model, lora)
        counts = model_setup.set_trainable(model, recipe["trainable"]["train"], recipe["trainable"]["freeze"])
        if recipe["gradient_checkpointing"]:
            base = model.get_base_model() if lora is not None else model
            model_setup.expose_input_embeddings(base)
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if lora is not None:
                model.enable_input_require_grads()
        groups, group_names = model_setup.parameter_groups(model, recipe["optimizer"]["lr_groups"],
                                                           recipe["optimizer"]["weight_decay"])
        # fused=None leaves torch's default (a per-tensor loop on CPU); True is one kernel per step.
        optimizer = torch.optim.AdamW(groups, betas=tuple(recipe["optimizer"]["betas"]),
                                      fused=True if recipe["optimizer"]["fused"] else None)

        dataset = self._data(mask_size, accelerator)
        batch = recipe["batch"]
        global_batch = batch["per_device"] * batch["grad_accum"] * world
        total_steps = recipe["schedule"]["max_steps"] or steps_for_epochs(len(dataset), recipe["schedule"]["epochs"],
                                                                         global_batch)

        start_step, history = 0, []
        if self.resume:
            start_step, history = self._resume(checkpoints, model, optimizer, group_names, total_steps,
                                               accelerator.is_main_process)
        if accelerator.is_main_process:
            self._truncate_log(start_step)
            print(f"model: {counts['trainable'] / 1e6:.2f} M trainable, {counts['frozen'] / 1e6:.2f} M frozen; "
                  f"{len(dataset)} examples, {total_steps} steps of {global_batch} on {world} process(es)", flush=True)

        has_presence_head = bool(getattr(model.config, "presence_head", False))
        has_region_head = bool(getattr(model.config, "region_head", False))
        model, optimizer = accelerator.prepare(model, optimizer)
        weights = LossWeights(**recipe["loss"]["weights"])
        self._uses_boxes = bool(weights.box_l1 or weights.box_giou)
        self._uses_semantic = bool(weights.semantic)
        self._uses_outside = bool(weights.outside)
        self._uses_presence = has_presence_head
        if weights.presence and not self._uses_presence:
            raise UserError("recipe: loss.weights.presence needs a model with SAM3's presence head "
                            "(config presence_head: true, e.g. model.scratch_overrides.presence_head)")
        if weights.region and not has_region_head:
            raise UserError("recipe: loss.weights.region needs a model with the region head "
                            "(config region_head: true, e.g. model.scratch_overrides.region_head)")
        criterion = SetCriterion(
            weights=weights,
            num_points=recipe["loss"]["num_points"],
            oversample_ratio=recipe["loss"]["oversample_ratio"],
            importance_sample_ratio=recipe["loss"]["importance_sample_ratio"],
            score_target=recipe["loss"]["score_target"],
            matcher=HungarianMatcher(cost_dice=recipe["loss"]["matcher"]["dice"],
                                     cost_mask=recipe["loss"]["matcher"]["mask"],
                                     cost_score=recipe["loss"]["matcher"]["score"]),
        )
        sampler = StepBatchSampler(len(dataset), recipe["seed"], batch["per_device"], batch["grad_accum"], world, rank,
                                   total_steps, start_step)
        workers = recipe["data"]["num_workers"]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=TrainingCollator(processor),
                                             num_workers=workers, persistent_workers=False,
                                             prefetch_factor=4 if workers else None)
        summary = self._loop(accelerator, model, optimizer, criterion, loader, sampler, total_steps, start_step,
                             history, checkpoints, group_names)
        accelerator.wait_for_everyone()
        bad = _first_non_finite(model_setup.trainable_state(accelerator.unwrap_model(model)))
        if bad is not None:  # the last update diverged: no final/ made of NaN
            raise NonFiniteTraining(f"after step {summary['steps']} the weight {bad} is not finite; final/ was not "
                                    f"written ({_newest_checkpoint_note(checkpoints)})")
        if accelerator.is_main_process:
            self._write_final(accelerator.unwrap_model(model), init_dir, lora is not None)
            plot_loss_curve(self.output / LOG_FILE, self.output / "loss_curve.png")
        accelerator.wait_for_everyone()
        summary["skipped_examples"] = int(sum(dataset.skipped.values()))
        summary["unusable_samples"] = int(self.unusable_samples)
        summary["is_main_process"] = bool(accelerator.is_main_process)
        accelerator.end_training()
        return summary

    def _loop(self, accelerator, model, optimizer, criterion, loader, sampler, total_steps, start_step, history,
              checkpoints, group_names) -> dict:
        recipe = self.recipe
        rank = accelerator.process_index
        accum = recipe["batch"]["grad_accum"]
        base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        schedule = recipe["schedule"]
        max_norm = recipe["optimizer"]["max_grad_norm"]
        log_every = recipe["log_every"]
        every = recipe["checkpoint"]["every_steps"]
        bar = None
        if accelerator.is_main_process and self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        sums = {k: 0.0 for k in LOSS_KEYS}
        window = 0
        # Wall time of earlier sessions of this run (before a resume) counts towards elapsed_s.
        before = history[-1]["elapsed_s"] if history else 0.0
        started = time.time() - before
        last = {}
        step, micro = start_step, 0
        model.train()
        try:
            for batch in loader:
                seed = step_seed(recipe["seed"], step, micro, rank)
                torch.manual_seed(seed)
                generator = torch.Generator().manual_seed(seed + 1)
                targets = batch.pop("targets")
                batch.pop("sources")
                labels = batch.pop("labels")
                inputs = {k: v.to(accelerator.device) for k, v in batch.items() if k in MODEL_INPUT_KEYS}
                targets = [t.to(accelerator.device) for t in targets]
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        out = model(**inputs)
                    losses = None
                    if bool(torch.isfinite(out.pred_masks).all()) and bool(torch.isfinite(out.pred_logits).all()):
                        losses = criterion(out.pred_masks.float(), out.pred_logits.float(), targets,
                                           out.logits, labels.to(accelerator.device), generator=generator,
                                           pred_boxes=out.pred_boxes.float() if self._uses_boxes else None,
                                           semantic_logits=out.semantic_logits if self._uses_semantic else None,
                                           presence_logits=out.presence_logits, region_logits=out.region_logits)
                    # Every rank learns whether any rank went non-finite before anyone steps or
                    # waits in backward's all-reduce, so they all stop together.
                    self._stop_if_not_finite(accelerator, losses, step + 1, checkpoints)
                    accelerator.backward(losses["loss"])
                    if accelerator.sync_gradients:
                        factor = lr_factor(step, total_steps, schedule["warmup_ratio"], schedule["kind"])
                        for group, base_lr in zip(optimizer.param_groups, base_lrs):
                            group["lr"] = base_lr * factor
                        if max_norm:
                            norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                            # gradients are already averaged over ranks here: every rank sees the same norm
                            if norm is not None and not math.isfinite(float(norm)):
                                raise NonFiniteTraining(
                                    f"step {step + 1}: the gradient norm is {float(norm)} (the loss was finite); "
                                    f"stopped before updating the weights, so nothing of this step was saved "
                                    f"({_newest_checkpoint_note(checkpoints)})")
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for key in LOSS_KEYS:
                    sums[key] += float(losses[key].detach()) / accum
                micro += 1
                if micro < accum:
                    continue
                micro = 0
                step += 1
                window += 1
                if step % log_every == 0 or step == total_steps:
                    means = torch.tensor([sums[k] / window for k in LOSS_KEYS], device=accelerator.device)
                    means = accelerator.reduce(means, reduction="mean")
                    last = {k: round(float(v), 6) for k, v in zip(LOSS_KEYS, means)}
                    entry = {"step": step, "epoch": round(sampler.epoch_at(step), 4), **last,
                             "lr": [g["lr"] for g in optimizer.param_groups],
                             "elapsed_s": round(time.time() - started, 2)}
                    history.append(entry)
                    if accelerator.is_main_process:
                        with open(self.output / LOG_FILE, "a", encoding="utf-8") as handle:
                            handle.write(json.dumps(entry) + "\n")
                    sums = {k: 0.0 for k in LOSS_KEYS}
                    window = 0
                    if bar is not None:
                        hidden = {k for k in last if (k.startswith("box_") and not self._uses_boxes)
                                  or (k == "semantic" and not self._uses_semantic)
                                  or (k == "presence" and not self._uses_presence)
                                  or (k == "outside" and not self._uses_outside)}
                        shown = {k: v for k, v in last.items() if k not in hidden}
                        bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})
                if bar is not None:
                    bar.update(1)
                if step % every == 0 and step < total_steps:
                    self._save_checkpoint(accelerator, checkpoints, model, optimizer, step, history, group_names)
                if self.kill_after_step is not None and step == self.kill_after_step:
                    # Test hook: die like a killed job (no cleanup, no final checkpoint).
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            if bar is not None:
                bar.close()
        return {"steps": step, "final": last, "elapsed_s": round(time.time() - started, 2),
                "session_s": round(time.time() - started - before, 2)}

    # ------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, accelerator, checkpoints, model, optimizer, step, history, group_names) -> None:
        accelerator.wait_for_everyone()
        # Every rank holds the same weights, so every rank reaches the same verdict (none waits alone).
        trainable = model_setup.trainable_state(accelerator.unwrap_model(model))
        bad = _first_non_finite(trainable)
        if bad is not None:
            raise NonFiniteTraining(f"step {step}: the weight {bad} is not finite; no checkpoint was written "
                                    f"({_newest_checkpoint_note(checkpoints)})")
        if accelerator.is_main_process:

            def write(directory: Path) -> None:
                save_tensors(trainable, directory / "trainable.safetensors")
                save_state(optimizer.state_dict(), directory, "optimizer")
                write_json(directory / STATE_FILE, {
                    "step": step, "fingerprint": self.recipe.fingerprint(), "history": history,
                    "group_names": [[model_setup.plain_name(n) for n in names] for names in group_names],
                })

            checkpoints.save(step, write)
        accelerator.wait_for_everyone()

    def _resume(self, checkpoints, model, optimizer, group_names, total_steps, is_main) -> tuple[int, list]:
        """Load the newest intact checkpoint; a damaged one is reported and the next older tried."""
        found = checkpoints.list()
        damaged = []
        for _, path in reversed(found):
            try:
                start_step, history = self._load_checkpoint(path, model, optimizer, group_names)
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

    def _load_checkpoint(self, path: Path, model, optimizer, group_names) -> tuple[int, list]:
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
        if state.get("fingerprint") != self.recipe.fingerprint():
            raise UserError(f"checkpoint {path} was written by another recipe; resume with the same recipe")
        names = [[model_setup.plain_name(n) for n in group] for group in group_names]
        if state.get("group_names") != names:
            raise UserError(f"checkpoint {path}: optimizer groups do not match the model's parameters")
        try:
            trainable = load_file(str(path / "trainable.safetensors"))
            optimizer_state = load_state(path, "optimizer")
        except (SafetensorError, OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise CheckpointDamaged(f"cannot read its tensors ({str(error).splitlines()[0][:200]})") from None
        bad = _first_non_finite(trainable)
        if bad is not None:
            raise CheckpointDamaged(f"the weight {bad} holds NaN or infinite values")
        optimizer_tensors, _ = flatten_state(optimizer_state)
        bad = _first_non_finite(optimizer_tensors)
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

    def _stop_if_not_finite(self, accelerator, losses, step: int, checkpoints) -> None:
        """Raise `NonFiniteTraining` on every rank when any rank's outputs or loss are not finite."""
        finite = losses is not None and bool(torch.isfinite(losses["loss"]).all())
        if accelerator.num_processes > 1:
            flag = torch.tensor([0.0 if finite else 1.0], device=accelerator.device)
            finite = float(accelerator.reduce(flag, reduction="sum")) == 0.0
        if finite:
            return
        if losses is None:
            what = "the model's outputs are not finite (its weights have diverged)"
        elif bool(torch.isfinite(losses["loss"]).all()):
            what = "the loss is not finite on another process"
        else:
            terms = ", ".join(f"{k}={float(losses[k].detach()):.4g}" for k in LOSS_KEYS[1:] if k in losses)
            what = f"the loss is {float(losses['loss'].detach())} ({terms})"
        raise NonFiniteTraining(f"step {step}: {what}; stopped before updating the weights, so nothing of this "
                                f"step was saved ({_newest_checkpoint_note(checkpoints)})")

    def _truncate_log(self, step: int) -> None:
        """Drop log lines past the resumed step (they were written after the last checkpoint) and a
        last line cut off by a kill."""
        log = self.output / LOG_FILE
        if not log.is_file():
            return
        kept = [json.dumps(entry) for entry in read_log(log) if entry["step"] <= step]
        log.write_text("".join(line + "\n" for line in kept))

    # ----------------------------------------------------------------- final
    def _write_final(self, model, init_dir: Path, is_lora: bool) -> None:
        """OUTPUT/final: a complete model directory (LoRA: merged; the adapter goes to OUTPUT/adapter)."""
        if is_lora:
            from instructsam_core.training.lora import save_adapter

            _publish(self.output / "adapter", lambda d: save_adapter(model, d))
            if not self.recipe["merge_lora_at_end"]:
                return
            model = model.merge_and_unload()

        def write(directory: Path) -> None:
            model.save_pretrained(directory)
            model_setup.copy_model_side_files(init_dir, directory)

        _publish(self.output / "final", write)


def _publish(target: Path, write) -> None:
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


def plot_loss_curve(log_path: Path, png_path: Path) -> None:
    """Total and per-term loss against step, from log.jsonl."""
    if not log_path.is_file():
        return
    entries = read_log(log_path)
    if not entries:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in entries]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(steps, [e["loss"] for e in entries], label="total")
    axes[0].set_title("total loss")
    terms = [k for k in LOSS_KEYS[1:] if any(e.get(k, 0.0) != 0.0 for e in entries)]
    for key in terms:
        axes[1].plot(steps, [e[key] for e in entries], label=key)
    axes[1].set_title("loss terms (unweighted)")
    for axis, keys in ((axes[0], LOSS_KEYS[:1]), (axes[1], terms)):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if all(e[k] > 0 for e in entries for k in keys):
            axis.set_yscale("log")
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
