"""LoRA training with the reference freeze policy, and `instructsam merge-lora`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from instructsam_core.cli import main as cli_main
from instructsam_core.errors import UserError
from instructsam_core.synth import generate
from instructsam_core.training.recipe import load_recipe
from instructsam_core.training.trainer import Trainer

TRAINING = Path(__file__).resolve().parents[1] / "training"


def _load_weights(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def test_lora_run_freezes_what_the_reference_freezes_and_merges(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    generate(data, 3, seed=2, split="train", progress=False)
    stage1 = yaml.safe_load((TRAINING / "stage1.yaml").read_text())
    recipe = {
        "seed": 1,
        "model": {"init": str(tiny_model_dir)},
        "data": {"mixture": [{"name": "synth", "path": "train.json"}], "num_workers": 0},
        "trainable": {**stage1["trainable"], "lora": {**stage1["trainable"]["lora"], "r": 4}},
        "optimizer": {"lr_groups": [{"name": "sam", "pattern": "grounding_model", "lr": 1e-2},
                                    {"name": "rest", "pattern": "", "lr": 1e-2}]},
        "schedule": {"max_steps": 2, "warmup_ratio": 0.0, "kind": "constant"},
        "threads": 1,
        "loss": {"num_points": 64},
        "checkpoint": {"every_steps": 1, "keep": 1},
        "log_every": 1,
    }
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    Trainer(load_recipe(path), data, run, progress=False).run()

    init = _load_weights(tiny_model_dir)
    final = _load_weights(run / "final")
    assert final.keys() == init.keys()  # merged: plain model keys, no lora_ leftovers

    def changed(key: str) -> bool:
        return not torch.equal(init[key], final[key])

    frozen = [k for k in init if k.startswith("model.visual.blocks.") or ".vision_encoder." in k
              or k.startswith("model.language_model.norm")]
    assert frozen and not any(changed(k) for k in frozen)
    for key in ("model.mask_queries", "model.mask_hidden_fcs.0.0.weight", "model.text_hidden_fcs.0.2.weight",
                "model.language_model.embed_tokens.weight", "model.visual.merger.linear_fc1.weight"):
        assert changed(key), key
    assert any(changed(k) for k in init if k.startswith("model.grounding_model.model.detr_decoder."))
    # q/k/v/o changed only through the merged LoRA update; the MLPs were not adapted
    assert changed("model.language_model.layers.0.self_attn.q_proj.weight")
    assert not changed("model.language_model.layers.0.mlp.up_proj.weight")

    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in adapter) and "model.mask_queries" in adapter
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 4

    # the stand-alone merge of base + adapter gives the same model as the run's own merge
    merged = tmp_path / "merged"
    assert cli_main(["merge-lora", "--model", str(tiny_model_dir), "--adapter", str(run / "adapter"),
                     "--out", str(merged)]) == 0
    again = _load_weights(merged)
    assert max(float((again[k] - final[k]).abs().max()) for k in final) < 1e-6
    assert (merged / "tokenizer.json").is_file()
    with pytest.raises(UserError, match="not empty"):
        from instructsam_core.training.lora import merge_adapter

        merge_adapter(tiny_model_dir, run / "adapter", merged)
    assert cli_main(["merge-lora", "--model", str(tiny_model_dir), "--adapter", str(tmp_path),
                     "--out", str(tmp_path / "x")]) == 2
