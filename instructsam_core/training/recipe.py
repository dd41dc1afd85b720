"""Training recipes: one YAML file that says what to train, on what, and how.

Every key is checked when the file is read, so a typo fails before any model is loaded. Paths
inside a recipe (the mixture file, an `init` model directory) are relative to the recipe file;
dataset paths inside the mixture are relative to `--data-root`. Keys and defaults:

    seed: 42
    model:
      init: DIR | default | scratch     # scratch = random init from `scratch:` (tiny.py sizes)
      scratch: {text_hidden: 64, ...}   # keyword arguments of instructsam_core.tiny.tiny_config
      scratch_overrides: {}             # dotted config paths tiny_config does not expose, e.g.
                                        #   sam3_config.vision_config.backbone_config.pretrain_image_size: 168
      scratch_init: {query_bank_std: null, spread_boxes: false}   # from-scratch symmetry breaking
      scratch_max_pixels: 16384         # VLM image budget of a scratch model
    data:
      mixture: FILE | [ {name, path, repeat, image_root} ... ]   # FILE: YAML or the release's .txt list
      json_dir: ''                      # where the mixture's JSON files are, relative to --data-root
      skip_bad: false                   # drop unreadable records (counted) instead of failing
      samples: conversation             # or turns (samples.py)
      instruction_style: release        # or varied, or benchmark (Inst2Seg wording only; templates.py)
      multi_objects: true               # the release's use_multi_objs (conversation only)
      merged_phrase: repeat             # or once (conversation only)
      point_annotations: question       # or drop
      instseg_single_phrase_fraction: 0.0   # turns only: share of instseg records asked one phrase per turn
      max_image_tokens: null            # cap on the VLM's image tokens (the release trains with 8192)
      num_workers: 1
    trainable:
      lora: null | {r: 64, alpha: 16, dropout: 0.05, target: REGEX}   # target: full match of module names
      train: [REGEX ...]                # parameter names (re.search) that are trained ...
      freeze: [REGEX ...]               # ... unless they also match one of these
    optimizer:
      lr_groups: [{name, pattern: REGEX, lr}]   # first match wins; the last should be ''
      weight_decay: 0.0
      betas: [0.9, 0.999]
      max_grad_norm: 1.0                 # null = no clipping
      fused: false                       # torch's fused AdamW kernel (same update, one kernel for all
                                         #   tensors: much faster for models of many small tensors)
    schedule: {epochs: 1, max_steps: null, warmup_ratio: 0.03, kind: cosine|constant,
               warmup_from: 0}           # 0: HF's warmup (first update at lr 0); 1: one step ahead
    batch: {per_device: 1, grad_accum: 1,
            accumulation: sum,           # or mean: how accumulated micro-batch losses combine
            group_by_modality_length: true}   # the release's batching (sampler.py), or a plain shuffle
    precision: auto | bf16 | fp16 | fp32   # auto = bf16 on GPUs that support it, else fp32
    gradient_checkpointing: false
    threads: null                        # torch CPU threads per process (null = torch default)
    cpu_processes: 1                     # >1: without a GPU, `instructsam train` starts this many
                                         #     local DDP (gloo) processes itself (as torchrun would)
    deepspeed: null | FILE               # a DeepSpeed config (ZeRO-1 in training/)
    loss: {num_points: 12544, oversample_ratio: 3.0, importance_sample_ratio: 0.75,
           point_sampling: bilinear,          # or nearest
           phrase_prompt: bare,               # SAM3's prompt in training; or model (the config's rule)
           no_target_phrase: placeholder,     # or unmatched   \
           targetless_samples: text_only,     # or all_terms    > which phrases train (dataset.py)
           box_samples: text_only,            # or mask        /
           score_target: dice,                # or binary, or mask_iou (one-to-many; criterion.py)
           matcher: {dice: 0.5, mask: 2.0, score: 1.0, dice_smooth: 0.001},   # Hungarian costs (matcher.py)
           weights: {text: 1.0, mask_bce: 4.0, mask_dice: 0.25, score: 1.0, box_l1: 0.0, box_giou: 0.0,
                     semantic: 0.0, presence: 0.0, outside: 0.0, region: 0.0}}
                                         # box_*, semantic, presence, outside, region: from-scratch
                                         # aids, 0 in the release (criterion.py)
    checkpoint: {every_steps: 500, keep: 2}
    log_every: 10
    merge_lora_at_end: true              # LoRA runs also write the merged model to final/
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from instructsam_core.errors import UserError
from instructsam_core.training.criterion import SCORE_TARGETS
from instructsam_core.training.dataset import BOX_SAMPLES, NO_TARGET_PHRASE, TARGETLESS_SAMPLES
from instructsam_core.training.samples import MERGED_PHRASE, POINT_ANNOTATIONS, SAMPLE_KINDS
from instructsam_core.training.templates import STYLES

DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "model": {"init": None, "scratch": {}, "scratch_overrides": {},
              "scratch_init": {"query_bank_std": None, "spread_boxes": False}, "scratch_max_pixels": 128 * 128},
    "data": {"mixture": None, "json_dir": "", "skip_bad": False, "samples": "conversation",
             "instruction_style": "release", "multi_objects": True, "merged_phrase": "repeat",
             "point_annotations": "question", "instseg_single_phrase_fraction": 0.0, "max_image_tokens": None,
             "num_workers": 1},
    "trainable": {"lora": None, "train": [".*"], "freeze": []},
    "optimizer": {
        "lr_groups": [{"name": "all", "pattern": "", "lr": 1e-4}],
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "max_grad_norm": 1.0,
        "fused": False,
    },
    "schedule": {"epochs": 1, "max_steps": None, "warmup_ratio": 0.03, "kind": "cosine", "warmup_from": 0},
    "batch": {"per_device": 1, "grad_accum": 1, "accumulation": "sum", "group_by_modality_length": True},
    "precision": "auto",
    "gradient_checkpointing": False,
    "threads": None,
    "cpu_processes": 1,
    "deepspeed": None,
    "loss": {
        "num_points": 12544,
        "oversample_ratio": 3.0,
        "importance_sample_ratio": 0.75,
        "point_sampling": "bilinear",
        "phrase_prompt": "bare",
        "no_target_phrase": "placeholder",
        "targetless_samples": "text_only",
        "box_samples": "text_only",
        "score_target": "dice",
        "matcher": {"dice": 0.5, "mask": 2.0, "score": 1.0, "dice_smooth": 1e-3},
        "weights": {"text": 1.0, "mask_bce": 4.0, "mask_dice": 0.25, "score": 1.0, "box_l1": 0.0, "box_giou": 0.0,
                    "semantic": 0.0, "presence": 0.0, "outside": 0.0, "region": 0.0},
    },
    "checkpoint": {"every_steps": 500, "keep": 2},
    "log_every": 10,
    "merge_lora_at_end": True,
}
LORA_DEFAULTS = {"r": 64, "alpha": 16, "dropout": 0.05,
                 "target": r".*language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"}
# Keys whose value is a free-form mapping (not checked against DEFAULTS key by key).
_FREE_FORM = {("model", "scratch"), ("model", "scratch_overrides")}


class Recipe:
    """A checked recipe: `recipe["optimizer"]["weight_decay"]`, plus the file it came from."""

    def __init__(self, values: dict[str, Any], path: Path | None) -> None:
        self.values = values
        self.path = path

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def resolve(self, value: str) -> Path:
        """A path from the recipe: absolute, or relative to the recipe file's directory."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def fingerprint(self) -> str:
        """Hash of everything that changes the run's result (a resume with another recipe is refused)."""
        payload = json.dumps(self.values, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _merge(defaults: dict, given: dict, where: str) -> dict:
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        if key not in defaults:
            raise UserError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(defaults))})")
        path = tuple(where.split(".")[1:]) + (key,)
        if isinstance(defaults[key], dict) and path not in _FREE_FORM:
            if not isinstance(value, dict):
                raise UserError(f"{where}.{key} must be a mapping")
            out[key] = _merge(defaults[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def _positive(value: Any, name: str, integer: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise UserError(f"recipe: {name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def _choice(section: dict, where: str, key: str, allowed: tuple[str, ...]) -> None:
    if section[key] not in allowed:
        raise UserError(f"recipe: {where}.{key} must be one of {', '.join(allowed)} (the first is the release's), "
                        f"got {section[key]!r}")


def _patterns(values: Any, name: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise UserError(f"recipe: {name} must be a list of regular expressions")
    for value in values:
        try:
            re.compile(value)
        except re.error as error:
            raise UserError(f"recipe: {name} holds an invalid pattern {value!r} ({error})") from None
    return values


def validate(values: dict[str, Any]) -> None:
    """Range and type checks beyond the key names."""
    model = values["model"]
    if not isinstance(model["init"], str) or not model["init"]:
        raise UserError("recipe: model.init must be a model directory, 'default' or 'scratch'")
    if not isinstance(model["scratch"], dict):
        raise UserError("recipe: model.scratch must be a mapping of tiny_config arguments")
    if not isinstance(model["scratch_overrides"], dict):
        raise UserError("recipe: model.scratch_overrides must be a mapping of dotted config paths to values")
    _positive(model["scratch_max_pixels"], "model.scratch_max_pixels", integer=True)
    _positive(model["scratch_init"]["query_bank_std"], "model.scratch_init.query_bank_std", allow_none=True)
    if not isinstance(model["scratch_init"]["spread_boxes"], bool):
        raise UserError("recipe: model.scratch_init.spread_boxes must be true or false")
    data = values["data"]
    if data["mixture"] is None:
        raise UserError("recipe: data.mixture is required (a mixture file or a list of datasets)")
    if not isinstance(data["json_dir"], str):
        raise UserError("recipe: data.json_dir must be a directory path (relative to --data-root)")
    _choice(data, "data", "samples", SAMPLE_KINDS)
    _choice(data, "data", "instruction_style", STYLES)
    _choice(data, "data", "merged_phrase", MERGED_PHRASE)
    _choice(data, "data", "point_annotations", POINT_ANNOTATIONS)
    if not isinstance(data["multi_objects"], bool):
        raise UserError("recipe: data.multi_objects must be true or false")
    _positive(data["max_image_tokens"], "data.max_image_tokens", integer=True, allow_none=True)
    fraction = data["instseg_single_phrase_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise UserError("recipe: data.instseg_single_phrase_fraction must be in [0, 1]")
    if isinstance(data["num_workers"], bool) or not isinstance(data["num_workers"], int) or data["num_workers"] < 0:
        raise UserError("recipe: data.num_workers must be a non-negative integer")
    trainable = values["trainable"]
    _patterns(trainable["train"], "trainable.train")
    _patterns(trainable["freeze"], "trainable.freeze")
    if trainable["lora"] is not None:
        if not isinstance(trainable["lora"], dict):
            raise UserError("recipe: trainable.lora must be a mapping or null")
        trainable["lora"] = _merge(LORA_DEFAULTS, trainable["lora"], "recipe.trainable.lora")
        _positive(trainable["lora"]["r"], "trainable.lora.r", integer=True)
        _positive(trainable["lora"]["alpha"], "trainable.lora.alpha")
        _patterns([trainable["lora"]["target"]], "trainable.lora.target")
    optimizer = values["optimizer"]
    groups = optimizer["lr_groups"]
    if not isinstance(groups, list) or not groups:
        raise UserError("recipe: optimizer.lr_groups must be a non-empty list")
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or set(group) - {"name", "pattern", "lr"} or "lr" not in group:
            raise UserError(f"recipe: optimizer.lr_groups[{i}] must be {{name, pattern, lr}}")
        _positive(group["lr"], f"optimizer.lr_groups[{i}].lr")
        _patterns([group.get("pattern", "")], f"optimizer.lr_groups[{i}].pattern")
    if isinstance(optimizer["weight_decay"], bool) or not isinstance(optimizer["weight_decay"], (int, float)) \
            or optimizer["weight_decay"] < 0:
        raise UserError("recipe: optimizer.weight_decay must be a non-negative number")
    betas = optimizer["betas"]
    if not (isinstance(betas, list) and len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise UserError("recipe: optimizer.betas must be two numbers in [0, 1)")
    _positive(optimizer["max_grad_norm"], "optimizer.max_grad_norm", allow_none=True)
    if not isinstance(optimizer["fused"], bool):
        raise UserError("recipe: optimizer.fused must be true or false")
    schedule = values["schedule"]
    _positive(schedule["epochs"], "schedule.epochs")
    _positive(schedule["max_steps"], "schedule.max_steps", integer=True, allow_none=True)
    if not isinstance(schedule["warmup_ratio"], (int, float)) or not 0 <= schedule["warmup_ratio"] < 1:
        raise UserError("recipe: schedule.warmup_ratio must be in [0, 1)")
    if schedule["kind"] not in ("cosine", "constant"):
        raise UserError("recipe: schedule.kind must be 'cosine' or 'constant'")
    if schedule["warmup_from"] not in (0, 1) or isinstance(schedule["warmup_from"], bool):
        raise UserError("recipe: schedule.warmup_from must be 0 (Hugging Face's warmup) or 1")
    batch = values["batch"]
    _positive(batch["per_device"], "batch.per_device", integer=True)
    _positive(batch["grad_accum"], "batch.grad_accum", integer=True)
    _choice(batch, "batch", "accumulation", ("sum", "mean"))
    if not isinstance(batch["group_by_modality_length"], bool):
        raise UserError("recipe: batch.group_by_modality_length must be true or false")
    if values["precision"] not in ("auto", "bf16", "fp16", "fp32"):
        raise UserError("recipe: precision must be auto, bf16, fp16 or fp32")
    _positive(values["threads"], "threads", integer=True, allow_none=True)
    _positive(values["cpu_processes"], "cpu_processes", integer=True)
    loss = values["loss"]
    _positive(loss["num_points"], "loss.num_points", integer=True)
    _positive(loss["oversample_ratio"], "loss.oversample_ratio")
    _choice(loss, "loss", "score_target", SCORE_TARGETS)
    _choice(loss, "loss", "point_sampling", ("bilinear", "nearest"))
    _choice(loss, "loss", "phrase_prompt", ("bare", "model"))
    _choice(loss, "loss", "no_target_phrase", NO_TARGET_PHRASE)
    _choice(loss, "loss", "targetless_samples", TARGETLESS_SAMPLES)
    _choice(loss, "loss", "box_samples", BOX_SAMPLES)
    _positive(loss["matcher"]["dice_smooth"], "loss.matcher.dice_smooth")
    for key, cost in loss["matcher"].items():
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0:
            raise UserError(f"recipe: loss.matcher.{key} must be a non-negative number")
    if not (loss["matcher"]["dice"] or loss["matcher"]["mask"]):
        raise UserError("recipe: loss.matcher needs a mask cost (dice or mask above 0)")
    if not 0 <= loss["importance_sample_ratio"] <= 1:
        raise UserError("recipe: loss.importance_sample_ratio must be in [0, 1]")
    weights = _merge(DEFAULTS["loss"]["weights"], loss["weights"], "recipe.loss.weights")
    for key, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise UserError(f"recipe: loss.weights.{key} must be a non-negative number")
    loss["weights"] = weights
    _positive(values["checkpoint"]["every_steps"], "checkpoint.every_steps", integer=True)
    _positive(values["checkpoint"]["keep"], "checkpoint.keep", integer=True)
    _positive(values["log_every"], "log_every", integer=True)


def check_finite(value: Any, where: str = "") -> None:
    """Refuse NaN and infinities anywhere in a recipe (YAML's .nan, .inf, 1.0e+999), naming the key:
    one such number (a learning rate, a loss weight) would turn every weight into NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"recipe: {where or 'the recipe'} must be a finite number, got {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_finite(item, f"{where}[{index}]")


def parse_recipe(values: Any, path: Path | None = None) -> Recipe:
    """Check a recipe's values; error messages start with 'recipe:' (load_recipe adds the file)."""
    if values is None:
        raise UserError("recipe: the file is empty (a recipe is a YAML mapping)")
    if not isinstance(values, dict):
        raise UserError(f"recipe: the top level must be a YAML mapping, got {type(values).__name__}")
    check_finite(values)
    merged = _merge(DEFAULTS, values, "recipe")
    validate(merged)
    return Recipe(merged, path)


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file (errors are one line naming the file and the key)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    try:
        return parse_recipe(values, path.resolve())
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
