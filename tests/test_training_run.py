"""End-to-end training runs on a tiny model: resume after a real SIGKILL, checkpoints, outputs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from instructsam_core.errors import UserError
from instructsam_core.synth import generate
from instructsam_core.training.recipe import load_recipe
from instructsam_core.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]

RECIPE = {
    "seed": 3,
    "model": {"init": "scratch", "scratch": {}},
    "data": {"mixture": [{"name": "synth", "path": "train.json"}], "instruction_style": "benchmark",
             "num_workers": 0},
    "optimizer": {"lr_groups": [{"name": "sam", "pattern": "grounding_model", "lr": 2.0e-3},
                                {"name": "rest", "pattern": "", "lr": 1.0e-3}]},
    "schedule": {"max_steps": 5, "warmup_ratio": 0.2},
    "batch": {"per_device": 1, "grad_accum": 2},
    "threads": 1,
    "loss": {"num_points": 128},
    "checkpoint": {"every_steps": 2, "keep": 2},
    "log_every": 1,
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_train")
    generate(root, 6, seed=11, split="train", progress=False)
    return root


def _recipe_file(directory: Path, **changes) -> Path:
    values = json.loads(json.dumps(RECIPE))
    for key, value in changes.items():
        values[key] = value
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "instructsam_core.cli", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stderr[-3000:]}")
    return result


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_killed_run_resumes_to_the_same_final_loss(data_root, tmp_path):
    recipe_path = _recipe_file(tmp_path)
    straight = tmp_path / "straight"
    summary = Trainer(load_recipe(recipe_path), data_root, straight, progress=False).run()
    assert summary["steps"] == 5

    killed = tmp_path / "killed"
    result = _cli("train", "--recipe", str(recipe_path), "--data-root", str(data_root), "--output", str(killed),
                  "--quiet", "--kill-after-step", "3", check=False)
    assert result.returncode == -signal.SIGKILL
    # step 3 finished but only the step-2 checkpoint exists; the log ran ahead of it
    assert [p.name for p in sorted((killed / "checkpoints").iterdir())] == ["step-00000002"]
    assert _log(killed)[-1]["step"] == 3
    assert not (killed / "final").exists()

    with pytest.raises(UserError, match="--resume"):
        Trainer(load_recipe(recipe_path), data_root, killed, progress=False).run()
    resumed = Trainer(load_recipe(recipe_path), data_root, killed, resume=True, progress=False).run()
    assert resumed["steps"] == 5
    a, b = _log(straight), _log(killed)
    assert [e["step"] for e in b] == [1, 2, 3, 4, 5]  # the stale step-3 line was replaced
    for x, y in zip(a, b):
        for key in ("loss", "text", "mask_bce", "mask_dice", "score"):
            assert abs(x[key] - y[key]) <= 1e-5 * max(1.0, abs(x[key])), (x, y)
        assert x["lr"] == pytest.approx(y["lr"])
    # the final weights agree as well
    from safetensors.torch import load_file

    wa = load_file(str(straight / "final" / "model.safetensors"))
    wb = load_file(str(killed / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    # and they moved away from the initialisation
    w0 = load_file(str(straight / "init_model" / "model.safetensors"))
    assert max(float((wa[k] - w0[k]).abs().max()) for k in wa) > 1e-4


def test_run_outputs_and_a_loadable_model(data_root, tmp_path):
    recipe_path = _recipe_file(tmp_path, schedule={"max_steps": 3, "warmup_ratio": 0.0})
    run = tmp_path / "run"
    Trainer(load_recipe(recipe_path), data_root, run, progress=False).run()
    assert (run / "loss_curve.png").stat().st_size > 1000
    log = _log(run)
    assert [e["step"] for e in log] == [1, 2, 3]
    # two lr groups, warmup 0 -> cosine from the base rates: step 1 uses factor 1.0 exactly
    assert log[0]["lr"] == pytest.approx([2.0e-3, 1.0e-3])
    # cosine: after step index 1 of 3, factor = 0.5 * (1 + cos(pi / 3)) = 0.75
    assert log[1]["lr"] == pytest.approx([1.5e-3, 0.75e-3])
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["fingerprint"] == load_recipe(recipe_path).fingerprint()

    from instructsam_core.predictor import Predictor

    predictor = Predictor.from_pretrained(run / "final", threshold=0.0)
    image = np.full((64, 80, 3), 200, dtype=np.uint8)
    pred = predictor.predict(image, "red circles", phrases=["red circles"])
    assert len(pred.instances) == 10 and pred.instances[0].mask.shape == (64, 80)

    # a different recipe may not resume this run
    other = _recipe_file(tmp_path, seed=4)
    with pytest.raises(UserError, match="another recipe"):
        Trainer(load_recipe(other), data_root, run, resume=True, progress=False).run()


def test_two_process_gloo_run(data_root, tmp_path):
    # cpu_processes: 2 makes `instructsam train` start itself under torch.distributed.run (gloo)
    recipe_path = _recipe_file(tmp_path, schedule={"max_steps": 2, "warmup_ratio": 0.0}, cpu_processes=2,
                               batch={"per_device": 1, "grad_accum": 1}, checkpoint={"every_steps": 1, "keep": 1})
    run = tmp_path / "ddp"
    result = _cli("train", "--recipe", str(recipe_path), "--data-root", str(data_root), "--output", str(run), "--quiet")
    assert "on 2 process(es)" in result.stdout
    assert result.stdout.count('"steps": 2') == 1  # one summary, from the main process
    log = _log(run)
    assert [e["step"] for e in log] == [1, 2] and all(np.isfinite(e["loss"]) for e in log)
    assert (run / "final" / "model.safetensors").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]


def test_scratch_overrides_reach_the_model(data_root, tmp_path):
    path = "sam3_config.vision_config.backbone_config.pretrain_image_size"
    recipe_path = _recipe_file(tmp_path, schedule={"max_steps": 1, "warmup_ratio": 0.0},
                               model={"init": "scratch", "scratch": {}, "scratch_overrides": {path: 112}})
    run = tmp_path / "over"
    Trainer(load_recipe(recipe_path), data_root, run, progress=False).run()
    # SAM3's config is written where the release reads it: the directory mask_decoder_model names.
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["mask_decoder_model"] == str((run / "final" / "sam3").resolve())  # not the temporary directory
    sam3 = json.loads((Path(config["mask_decoder_model"]) / "config.json").read_text())["detector_config"]
    assert sam3["vision_config"]["backbone_config"]["pretrain_image_size"] == 112
    from safetensors.torch import load_file

    weights = load_file(str(run / "final" / "model.safetensors"))
    # 112 / 14 = 8 -> an 8x8 table instead of the tiled 4x4 default
    key = "model.grounding_model.model.vision_encoder.backbone.embeddings.position_embeddings"
    assert weights[key].shape[1] == 64
    bad = _recipe_file(tmp_path, model={"init": "scratch", "scratch_overrides": {"sam3_config.no_such": 1}})
    with pytest.raises(UserError, match="no 'no_such'"):
        Trainer(load_recipe(bad), data_root, tmp_path / "bad", progress=False).run()


def test_presence_head_trains_only_when_the_model_has_one(data_root, tmp_path):
    with_weight = {"num_points": 128, "weights": {"presence": 1.0}}
    bad = _recipe_file(tmp_path, loss=with_weight)
    with pytest.raises(UserError, match="presence head"):
        Trainer(load_recipe(bad), data_root, tmp_path / "bad", progress=False).run()
    recipe_path = _recipe_file(tmp_path, loss=with_weight, schedule={"max_steps": 2, "warmup_ratio": 0.0},
                               model={"init": "scratch", "scratch": {}, "scratch_overrides": {"presence_token": True, "presence_head": True}})
    run = tmp_path / "presence"
    Trainer(load_recipe(recipe_path), data_root, run, progress=False).run()
    assert all(0.0 < e["presence"] < 5.0 for e in _log(run))
    from safetensors.torch import load_file

    start = load_file(str(run / "init_model" / "model.safetensors"))
    final = load_file(str(run / "final" / "model.safetensors"))
    head = [k for k in final if ".detr_decoder.presence_head." in k]
    assert head and all(not torch.equal(start[k], final[k]) for k in head)


def test_region_head_trains_only_when_the_model_has_one(data_root, tmp_path):
    with_weight = {"num_points": 128, "weights": {"region": 1.0}, "score_target": "mask_iou"}
    bad = _recipe_file(tmp_path, loss=with_weight)
    with pytest.raises(UserError, match="region head"):
        Trainer(load_recipe(bad), data_root, tmp_path / "bad", progress=False).run()
    overrides = {"region_head": True, "instance_score": "semantic_x_mask_x_region"}
    recipe_path = _recipe_file(tmp_path, loss=with_weight, schedule={"max_steps": 2, "warmup_ratio": 0.0},
                               model={"init": "scratch", "scratch": {}, "scratch_overrides": overrides})
    run = tmp_path / "region"
    Trainer(load_recipe(recipe_path), data_root, run, progress=False).run()
    assert all(0.0 < e["region"] < 5.0 for e in _log(run))
    from safetensors.torch import load_file

    start = load_file(str(run / "init_model" / "model.safetensors"))
    final = load_file(str(run / "final" / "model.safetensors"))
    head = [k for k in final if k.startswith("model.region_head.")]
    assert head and all(not torch.equal(start[k], final[k]) for k in head)
    # The written config keeps the head and its scoring rule.
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["region_head"] is True and config["instance_score"] == "semantic_x_mask_x_region"


def test_one_to_many_recipe_resumes_exactly_with_the_fused_optimizer(data_root, tmp_path):
    # The learning check's options together: score-free matching, one-to-many score targets,
    # the semantic term, mask NMS and semantic_x_mask scores in the model config, torch's fused
    # AdamW - and a kill + resume must still land on the same weights.
    recipe_path = _recipe_file(
        tmp_path, schedule={"max_steps": 4, "warmup_ratio": 0.0}, checkpoint={"every_steps": 2, "keep": 1},
        optimizer={"lr_groups": [{"name": "all", "pattern": "", "lr": 1.0e-3}], "fused": True},
        model={"init": "scratch", "scratch": {},
               "scratch_overrides": {"mask_nms_overlap": 0.5, "instance_score": "semantic_x_mask"}},
        loss={"num_points": 128, "score_target": "mask_iou", "matcher": {"score": 0.0},
              "weights": {"semantic": 1.0}})
    straight = tmp_path / "straight"
    Trainer(load_recipe(recipe_path), data_root, straight, progress=False).run()
    log = _log(straight)
    assert all(e["semantic"] > 0.0 and np.isfinite(e["loss"]) for e in log)
    config = json.loads((straight / "final" / "config.json").read_text())
    assert config["mask_nms_overlap"] == 0.5 and config["instance_score"] == "semantic_x_mask"

    killed = tmp_path / "killed"
    result = _cli("train", "--recipe", str(recipe_path), "--data-root", str(data_root), "--output", str(killed),
                  "--quiet", "--kill-after-step", "3", check=False)
    assert result.returncode == -signal.SIGKILL
    Trainer(load_recipe(recipe_path), data_root, killed, resume=True, progress=False).run()
    from safetensors.torch import load_file

    wa = load_file(str(straight / "final" / "model.safetensors"))
    wb = load_file(str(killed / "final" / "model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
