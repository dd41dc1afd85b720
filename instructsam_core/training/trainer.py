"""The training loop, on Hugging Face `accelerate` (DDP under torchrun, DeepSpeed via a config).

What one run does (`instructsam train`):
  1. checks the recipe, builds the starting model (a model directory, the embedded default, or a
     scratch model written to OUTPUT/init_model), applies LoRA and the freeze policy, groups
     parameters by learning rate;
  2. reads the data mixture and checks every training sample (image header and size, masks)
     before the first step (run_data.py); optionally resumes from the newest intact checkpoint in
     OUTPUT/checkpoints (run_state.py): trainable weights, optimizer state, step; the data order
     and every random draw (samples, dropout, point sampling) are functions of (seed, step,
     micro-batch, rank), so the resumed run computes what the uninterrupted one would have;
  3. trains with a tqdm bar (loss terms, ETA) and writes OUTPUT/log.jsonl (run_log.py); outputs,
     a loss or a gradient norm that is not finite stop the run before the update
     (NonFiniteTraining);
  4. writes OUTPUT/final (a loadable model directory; for LoRA also OUTPUT/adapter) and
     OUTPUT/loss_curve.png.
Accumulated micro-batches add their losses (`batch.accumulation: sum`, as the release's HF
Trainer does) or average them (`mean`).
"""
from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import torch
import yaml

from instructsam_core.errors import UserError
from instructsam_core.training import model_setup, run_state
from instructsam_core.training.checkpoint import CheckpointManager
from instructsam_core.training.collate import TrainingCollator
from instructsam_core.training.criterion import LossWeights, SetCriterion
from instructsam_core.training.matcher import HungarianMatcher
from instructsam_core.training.recipe import Recipe
from instructsam_core.training.run_data import build_dataset
from instructsam_core.training.run_log import LOG_FILE, LOSS_KEYS, append_log, plot_loss_curve, truncate_log
from instructsam_core.training.run_state import NonFiniteTraining, newest_checkpoint_note
from instructsam_core.training.sampler import StepBatchSampler, lr_factor, steps_for_epochs

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw",
                    "sam_pixel_values", "phrase_ids", "phrase_mask")


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


def build_criterion(recipe) -> SetCriterion:
    loss = recipe["loss"]
    matcher = loss["matcher"]
    return SetCriterion(
        weights=LossWeights(**loss["weights"]),
        num_points=loss["num_points"],
        oversample_ratio=loss["oversample_ratio"],
        importance_sample_ratio=loss["importance_sample_ratio"],
        score_target=loss["score_target"],
        matcher=HungarianMatcher(cost_dice=matcher["dice"], cost_mask=matcher["mask"], cost_score=matcher["score"],
                                 dice_smooth=matcher["dice_smooth"]),
        point_mode=loss["point_sampling"],
    )


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

    def _model(self, accelerator):
        """(model with LoRA and the freeze policy applied, processor, init dir, parameter counts)."""
        from instructsam_core.modeling import InstructSamForSegmentation
        from instructsam_core.processing import InstructSamProcessor

        recipe = self.recipe
        if accelerator.is_main_process:
            model_setup.init_model_dir(recipe, self.output, True)
        accelerator.wait_for_everyone()
        init_dir = model_setup.init_model_dir(recipe, self.output, False)
        model = InstructSamForSegmentation.from_pretrained(init_dir, dtype=torch.float32)
        model.config.inference_layout = "trained"  # trained by the training forward's layout: saved so
        processor = InstructSamProcessor.from_pretrained(init_dir, model.config)
        if recipe["data"]["max_image_tokens"]:
            # The release caps the image at mm_max_length tokens of (patch * merge)^2 pixels each.
            processor.max_pixels = int(recipe["data"]["max_image_tokens"]) * (processor.patch_size * processor.merge_size) ** 2
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
        return model, processor, init_dir, counts

    # ------------------------------------------------------------------- run
    def run(self) -> dict:
        recipe = self.recipe
        if recipe["threads"]:
            torch.set_num_threads(int(recipe["threads"]))
        accelerator = self._accelerator()
        rank, world = accelerator.process_index, accelerator.num_processes
        checkpoints = self._prepare_output(accelerator)
        model, processor, init_dir, counts = self._model(accelerator)
        mask_size = mask_grid_size(model.config)
        groups, group_names = model_setup.parameter_groups(model, recipe["optimizer"]["lr_groups"],
                                                           recipe["optimizer"]["weight_decay"])
        # fused=None leaves torch's default (a per-tensor loop on CPU); True is one kernel per step.
        optimizer = torch.optim.AdamW(groups, betas=tuple(recipe["optimizer"]["betas"]),
                                      fused=True if recipe["optimizer"]["fused"] else None)

        dataset, unusable = build_dataset(recipe, self.data_root, mask_size, accelerator, self.progress)
        batch = recipe["batch"]
        global_batch = batch["per_device"] * batch["grad_accum"] * world
        total_steps = recipe["schedule"]["max_steps"] or steps_for_epochs(len(dataset), recipe["schedule"]["epochs"],
                                                                         global_batch)

        start_step, history = 0, []
        if self.resume:
            start_step, history = run_state.resume(checkpoints, model, optimizer, group_names, total_steps,
                                                   accelerator.is_main_process, recipe.fingerprint())
        if accelerator.is_main_process:
            truncate_log(self.output, start_step)
            print(f"model: {counts['trainable'] / 1e6:.2f} M trainable, {counts['frozen'] / 1e6:.2f} M frozen; "
                  f"{len(dataset)} examples, {total_steps} steps of {global_batch} on {world} process(es)", flush=True)

        has_presence_head = bool(getattr(model.config, "presence_head", False))
        has_region_head = bool(getattr(model.config, "region_head", False))
        model, optimizer = accelerator.prepare(model, optimizer)
        criterion = build_criterion(recipe)
        weights = criterion.weights
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
        lengths = dataset.modality_lengths() if batch["group_by_modality_length"] else None
        sampler = StepBatchSampler(len(dataset), recipe["seed"], batch["per_device"], batch["grad_accum"], world, rank,
                                   total_steps, start_step, lengths=lengths)
        workers = recipe["data"]["num_workers"]
        collator = TrainingCollator(processor, bare_phrase_prompt=recipe["loss"]["phrase_prompt"] == "bare")
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collator,
                                             num_workers=workers, persistent_workers=False,
                                             prefetch_factor=4 if workers else None)
        summary = self._loop(accelerator, model, optimizer, criterion, loader, sampler, total_steps, start_step,
                             history, checkpoints, group_names)
        accelerator.wait_for_everyone()
        bad = run_state.first_non_finite(model_setup.trainable_state(accelerator.unwrap_model(model)))
        if bad is not None:  # the last update diverged: no final/ made of NaN
            raise NonFiniteTraining(f"after step {summary['steps']} the weight {bad} is not finite; final/ was not "
                                    f"written ({newest_checkpoint_note(checkpoints)})")
        if accelerator.is_main_process:
            run_state.write_final(self.output, accelerator.unwrap_model(model), init_dir,
                                  recipe["trainable"]["lora"] is not None, recipe["merge_lora_at_end"])
            plot_loss_curve(self.output / LOG_FILE, self.output / "loss_curve.png")
        accelerator.wait_for_everyone()
        summary["skipped_examples"] = int(sum(dataset.skipped.values()))
        summary["unusable_samples"] = int(unusable)
        summary["is_main_process"] = bool(accelerator.is_main_process)
        accelerator.end_training()
        return summary

    def _losses(self, accelerator, model, criterion, batch: dict, generator) -> dict | None:
        """The loss terms of one micro-batch, or None when the model's outputs are not finite."""
        targets = [t.to(accelerator.device) for t in batch.pop("targets")]
        active = batch.pop("trains_masks")
        batch.pop("sources")
        labels = batch.pop("labels")
        inputs = {k: v.to(accelerator.device) for k, v in batch.items() if k in MODEL_INPUT_KEYS}
        with accelerator.autocast():
            out = model(**inputs)
        if not all(bool(torch.isfinite(t).all()) for t in (out.pred_masks, out.pred_logits) if t is not None):
            return None

        def floats(tensor):
            return None if tensor is None else tensor.float()

        return criterion(floats(out.pred_masks), floats(out.pred_logits), targets, out.logits,
                         labels.to(accelerator.device), generator=generator,
                         pred_boxes=floats(out.pred_boxes) if self._uses_boxes else None,
                         semantic_logits=out.semantic_logits if self._uses_semantic else None,
                         presence_logits=out.presence_logits, region_logits=out.region_logits, active=active)

    def _loop(self, accelerator, model, optimizer, criterion, loader, sampler, total_steps, start_step, history,
              checkpoints, group_names) -> dict:
        recipe = self.recipe
        rank = accelerator.process_index
        accum = recipe["batch"]["grad_accum"]
        # accelerate divides each micro-batch's loss by `accum` (DeepSpeed's engine likewise):
        # multiplying it back makes the accumulated gradient the sum of the micro-batch gradients.
        backward_scale = float(accum) if recipe["batch"]["accumulation"] == "sum" else 1.0
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
                with accelerator.accumulate(model):
                    losses = self._losses(accelerator, model, criterion, batch, generator)
                    # Every rank learns whether any rank went non-finite before anyone steps or
                    # waits in backward's all-reduce, so they all stop together.
                    self._stop_if_not_finite(accelerator, losses, step + 1, checkpoints)
                    accelerator.backward(losses["loss"] * backward_scale if backward_scale != 1.0 else losses["loss"])
                    if accelerator.sync_gradients:
                        factor = lr_factor(step, total_steps, schedule["warmup_ratio"], schedule["kind"],
                                           schedule["warmup_from"])
                        for group, base_lr in zip(optimizer.param_groups, base_lrs):
                            group["lr"] = base_lr * factor
                        if max_norm:
                            norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                            # gradients are already averaged over ranks here: every rank sees the same norm
                            if norm is not None and not math.isfinite(float(norm)):
                                raise NonFiniteTraining(
                                    f"step {step + 1}: the gradient norm is {float(norm)} (the loss was finite); "
                                    f"stopped before updating the weights, so nothing of this step was saved "
                                    f"({newest_checkpoint_note(checkpoints)})")
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
                        append_log(self.output, entry)
                    sums = {k: 0.0 for k in LOSS_KEYS}
                    window = 0
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.3f}" for k, v in last.items() if self._shown(k)})
                if bar is not None:
                    bar.update(1)
                if step % every == 0 and step < total_steps:
                    run_state.save_checkpoint(accelerator, checkpoints, model, optimizer, step, history, group_names,
                                              recipe.fingerprint())
                if self.kill_after_step is not None and step == self.kill_after_step:
                    # Test hook: die like a killed job (no cleanup, no final checkpoint).
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            if bar is not None:
                bar.close()
        return {"steps": step, "final": last, "elapsed_s": round(time.time() - started, 2),
                "session_s": round(time.time() - started - before, 2)}

    def _shown(self, key: str) -> bool:
        """Whether the progress bar shows a loss term (not the optional terms this run does not use)."""
        return not ((key.startswith("box_") and not self._uses_boxes) or (key == "semantic" and not self._uses_semantic)
                    or (key == "presence" and not self._uses_presence) or (key == "outside" and not self._uses_outside))

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
                                f"step was saved ({newest_checkpoint_note(checkpoints)})")
