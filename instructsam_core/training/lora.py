"""LoRA adapters of a run and merging them into the base weights (between the two stages).

An adapter directory holds `adapter_config.json` (peft's LoraConfig) and
`adapter_model.safetensors` with every tensor the run trained: the LoRA matrices and the fully
trained modules (embeddings, lm_head, projectors, query bank, merger, SAM3 decoder side). So
"base + adapter" is the whole trained model, and `merge_adapter` writes it as one plain model
directory that loads with `InstructSamForSegmentation.from_pretrained`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from instructsam_core.errors import CheckpointError, UserError
from instructsam_core.training import model_setup
from instructsam_core.training.state_io import save_tensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def save_adapter(peft_model, directory: Path) -> None:
    """Write the LoRA config and every trainable tensor of `peft_model` into `directory`."""
    peft_model.peft_config["default"].save_pretrained(str(directory))
    save_tensors(model_setup.trainable_state(peft_model), directory / ADAPTER_WEIGHTS,
                 metadata={"format": "pt", "instructsam": "adapter"})


def merge_adapter(
    base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, sam3_config: str | Path | None = None
) -> Path:
    """base model + adapter -> a merged model directory at `out_dir` (which must not exist yet);
    `sam3_config` overrides where the base model's SAM3 architecture comes from."""
    from peft import LoraConfig, get_peft_model

    from instructsam_core.model_paths import resolve_model_dir
    from instructsam_core.modeling import InstructSamForSegmentation

    base = resolve_model_dir(base_dir)
    adapter = Path(adapter_dir)
    out = Path(out_dir)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (adapter / name).is_file():
            raise UserError(f"{adapter} is not an adapter directory: {name} is missing")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty; choose a new --out")
    try:
        config = LoraConfig.from_pretrained(str(adapter))
    except (ValueError, TypeError, OSError) as error:
        raise UserError(f"{adapter / ADAPTER_CONFIG} is not a LoRA config: {error}") from None
    model = InstructSamForSegmentation.from_pretrained(base, dtype=torch.float32, sam3_config=sam3_config)
    model.config.inference_layout = "trained"  # the adapter was trained in the training forward's layout
    model_setup.expose_input_embeddings(model)
    peft_model = get_peft_model(model, config)
    state = load_file(str(adapter / ADAPTER_WEIGHTS))
    params = {model_setup.plain_name(n): p for n, p in peft_model.named_parameters()}
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise CheckpointError(f"adapter tensors do not belong to the model in {base}: {', '.join(unknown[:5])}")
    lora_names = {n for n in params if "lora_" in n}
    missing = sorted(lora_names - set(state))
    if missing:
        raise CheckpointError(f"adapter lacks LoRA tensors {', '.join(missing[:5])}")
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise CheckpointError(f"adapter tensor {name} has shape {tuple(tensor.shape)}, the model "
                                      f"{tuple(params[name].shape)}")
            params[name].copy_(tensor.to(params[name].dtype))
    merged = peft_model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    model_setup.copy_model_side_files(base, out)
    return out
