"""Building the model to train: its starting weights, LoRA, the freeze policy, the lr groups.

The reference recipe (reference-design.md, "Training") trains LoRA on the LLM's attention
projections, fully trains the token embeddings, lm_head, both projector MLPs, the query bank,
the vision-language merger and SAM3 except its image encoder, and freezes the rest. Recipes
express that as regular expressions over parameter names, so other policies (e.g. full
training of a small model from scratch) are a recipe edit, not a code change.
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from instructsam_core.errors import UserError
from instructsam_core.model_paths import resolve_model_dir
from instructsam_core.sam3_config import record_sam3_location

PEFT_PREFIX = "base_model.model."
MODEL_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                    "preprocessor_config.json")


def plain_name(name: str) -> str:
    """Parameter name without peft's wrapper prefix (so patterns work with and without LoRA)."""
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def init_model_dir(recipe, output: Path, is_main: bool) -> Path:
    """Directory the run starts from. A scratch model is written once, to OUTPUT/init_model."""
    init = recipe["model"]["init"]
    if init != "scratch":
        if init == "default":
            return resolve_model_dir("default")
        return resolve_model_dir(recipe.resolve(init))
    target = output / "init_model"
    if is_main and not (target / "config.json").is_file():
        temporary = output / ".tmp-init_model"
        shutil.rmtree(temporary, ignore_errors=True)
        write_scratch_model(temporary, seed=int(recipe["seed"]), max_pixels=int(recipe["model"]["scratch_max_pixels"]),
                            sizes=recipe["model"]["scratch"], overrides=recipe["model"]["scratch_overrides"],
                            init=recipe["model"]["scratch_init"])
        (temporary / "README.md").write_text(
            "Random initialisation of a training run (recipe model.init: scratch); the trained weights are in ../final.\n"
        )
        shutil.rmtree(target, ignore_errors=True)
        temporary.rename(target)
        record_sam3_location(target)
    return target


def apply_config_overrides(config, overrides: dict) -> None:
    """Set nested config fields by dotted path, e.g. `sam3_config.vision_config.backbone_config.window_size`.

    Every path must already exist: a typo is an error, not a silently added field.
    """
    for path, value in overrides.items():
        node = config
        parts = str(path).split(".")
        for part in parts[:-1]:
            if not hasattr(node, part):
                raise UserError(f"recipe: model.scratch_overrides: {path!r}: the config has no {part!r}")
            node = getattr(node, part)
        if not hasattr(node, parts[-1]):
            raise UserError(f"recipe: model.scratch_overrides: {path!r}: the config has no {parts[-1]!r}")
        setattr(node, parts[-1], value)


def spread_reference_boxes(num_queries: int, size: float = 0.25) -> torch.Tensor:
    """Logits of `num_queries` anchor boxes (cx, cy, w, h) spread over the image on a near-square grid."""
    columns = int(math.ceil(math.sqrt(num_queries)))
    rows = int(math.ceil(num_queries / columns))
    boxes = []
    for index in range(num_queries):
        row, column = divmod(index, columns)
        boxes.append([(column + 0.5) / columns, (row + 0.5) / rows, size, size])
    boxes = torch.tensor(boxes).clamp(1e-3, 1 - 1e-3)
    return torch.log(boxes / (1 - boxes))


def symmetry_breaking_init(model: nn.Module, query_bank_std: float | None, spread_boxes: bool) -> None:
    """Initialisation for training from scratch (no pretrained SAM3).

    The paper zero-initialises the query bank, and SAM3's learned reference boxes come pretrained
    and spread over the image. From scratch, both would start identical for all queries (the boxes
    all at sigmoid(~0) = the image centre), so the 10 queries of a phrase would be
    interchangeable and slow to specialise. This gives the bank small random rows and the
    reference boxes a grid of distinct anchors.
    """
    backbone = model.model
    with torch.no_grad():
        if query_bank_std:
            backbone.mask_queries.normal_(0.0, float(query_bank_std))
        if spread_boxes:
            reference = backbone.grounding_model.model.detr_decoder.reference_points.weight
            reference.copy_(spread_reference_boxes(reference.shape[0]).to(reference.dtype))


def write_scratch_model(
    target: Path, seed: int, max_pixels: int, sizes: dict, overrides: dict, init: dict | None = None
) -> None:
    """A random-init model directory from `tiny_config(**sizes)` plus dotted-path `overrides`.

    Like `instructsam_core.tiny.write_tiny_model`, with the extra overrides a recipe may need for
    fields tiny_config does not expose (e.g. SAM3's position-embedding grid), and the optional
    from-scratch initialisation of `symmetry_breaking_init` (`init`: query_bank_std, spread_boxes).
    """
    from instructsam_core.modeling import InstructSamForSegmentation
    from instructsam_core.processing import write_preprocessor_config
    from instructsam_core.tiny import build_tokenizer, tiny_config

    tokenizer = build_tokenizer()
    try:
        config = tiny_config(tokenizer, **sizes)
    except TypeError as error:
        raise UserError(f"recipe: model.scratch has an argument tiny_config does not take ({error})") from None
    apply_config_overrides(config, overrides)
    torch.manual_seed(seed)
    model = InstructSamForSegmentation(config)
    init = init or {}
    symmetry_breaking_init(model, init.get("query_bank_std"), bool(init.get("spread_boxes", False)))
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    vision = config.vision_config
    write_preprocessor_config(target, patch_size=int(vision.patch_size), merge_size=int(vision.spatial_merge_size),
                              min_pixels=32 * 32, max_pixels=max_pixels)


def copy_model_side_files(source: Path, target: Path) -> None:
    """Tokenizer and preprocessor files a model directory needs besides config + weights."""
    for name in MODEL_SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def apply_lora(model: nn.Module, lora: dict) -> nn.Module:
    """Wrap `model` with peft LoRA adapters on the modules whose names match `lora.target`."""
    from peft import LoraConfig, get_peft_model

    expose_input_embeddings(model)
    config = LoraConfig(r=int(lora["r"]), lora_alpha=float(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                        target_modules=lora["target"], bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise UserError(f"recipe: trainable.lora.target matches no module ({error})") from None


def expose_input_embeddings(model: nn.Module) -> None:
    """Make `get_input_embeddings()` return the embedding module (peft and gradient checkpointing
    call it). InstructSamForSegmentation has a *method* named `embed_tokens`, which transformers'
    default lookup returns instead; a no-op once the model class overrides the lookup itself."""
    if not isinstance(model.get_input_embeddings(), nn.Module):
        embeddings = model.model.get_input_embeddings()
        model.get_input_embeddings = lambda: embeddings


def set_trainable(model: nn.Module, train: list[str], freeze: list[str]) -> dict[str, int]:
    """requires_grad = matches a `train` pattern and no `freeze` pattern (LoRA weights always train).

    Returns counts {trainable, frozen} of parameters (elements), for the log.
    """
    train_re = [re.compile(p) for p in train]
    freeze_re = [re.compile(p) for p in freeze]
    counts = {"trainable": 0, "frozen": 0}
    for name, param in model.named_parameters():
        plain = plain_name(name)
        if "lora_" in plain:
            wanted = True
        else:
            wanted = any(r.search(plain) for r in train_re) and not any(r.search(plain) for r in freeze_re)
        param.requires_grad_(wanted)
        counts["trainable" if wanted else "frozen"] += param.numel()
    if counts["trainable"] == 0:
        raise UserError("recipe: the trainable/freeze patterns leave no parameter to train")
    return counts


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def parameter_groups(model: nn.Module, lr_groups: list[dict], weight_decay: float) -> tuple[list[dict], list[list[str]]]:
    """Optimizer groups: each trainable parameter goes to the first lr group whose pattern matches.

    Returns (torch param groups, parameter names per group) - the names are stored with the
    optimizer state so that a resume can check it maps the state onto the same parameters.
    """
    patterns = [re.compile(g.get("pattern", "")) for g in lr_groups]
    buckets: list[list[tuple[str, nn.Parameter]]] = [[] for _ in lr_groups]
    for name, param in trainable_named_parameters(model):
        plain = plain_name(name)
        for index, pattern in enumerate(patterns):
            if pattern.search(plain):
                buckets[index].append((name, param))
                break
        else:
            raise UserError(f"recipe: trainable parameter {plain} matches no optimizer.lr_groups pattern")
    groups, names = [], []
    for spec, bucket in zip(lr_groups, buckets):
        if not bucket:
            continue
        groups.append({"params": [p for _, p in bucket], "lr": float(spec["lr"]), "initial_lr": float(spec["lr"]),
                       "weight_decay": float(weight_decay), "group_name": str(spec.get("name", ""))})
        names.append([n for n, _ in bucket])
    return groups, names


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor by (peft-free) name: what a checkpoint must hold besides the init."""
    return {plain_name(n): p.detach() for n, p in trainable_named_parameters(model)}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors back; the set of names must match exactly."""
    params = dict((plain_name(n), p) for n, p in trainable_named_parameters(model))
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise UserError(
            f"checkpoint does not match the model's trainable parameters (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); was it written by another recipe?"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise UserError(f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, "
                                f"the model {tuple(params[name].shape)}")
            params[name].copy_(tensor)
