"""Training that meets bad numbers, damaged checkpoints, cut logs and unusable records."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from instructsam_core.errors import UserError
from instructsam_core.synth import generate
from instructsam_core.training.checkpoint import MANIFEST, CheckpointDamaged, CheckpointManager, verify, write_manifest
from instructsam_core.training.recipe import load_recipe
from instructsam_core.training.trainer import Trainer

RECIPE = {
    "seed": 3,
    "model": {"init": "scratch", "scratch": {}},
    "data": {"mixture": [{"name": "synth", "path": "train.json"}], "instruction_style": "benchmark",
             "num_workers": 0},
    "optimizer": {"lr_groups": [{"name": "sam", "pattern": "grounding_model", "lr": 2.0e-3},
                                {"name": "rest", "pattern": "", "lr": 1.0e-3}]},
    "schedule": {"max_steps": 4, "warmup_ratio": 0.2},
    "batch": {"per_device": 1, "grad_accum": 1},
    "threads": 1,
    "loss": {"num_points": 128},
    "checkpoint": {"every_steps": 1, "keep": 3},
    "log_every": 1,
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_hardening")
    generate(root, 6, seed=11, split="train", progress=False)
    return root


def _recipe(directory: Path, **changes) -> Path:
    values = json.loads(json.dumps(RECIPE))
    for dotted, value in changes.items():
        node = values
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _all_finite(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values() if t.is_floating_point())


# ----------------------------------------------------------------------------- non-finite numbers


def test_a_loss_that_is_not_finite_stops_before_anything_is_saved(data_root, tmp_path):
    # Every number in this recipe is finite, but text CE (~6) x 1e38 overflows float32.
    recipe = load_recipe(_recipe(tmp_path, **{"loss.weights": {"text": 1.0e38}}))
    out = tmp_path / "run"
    with pytest.raises(UserError) as caught:
        Trainer(recipe, data_root, out, progress=False).run()
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("step 1: the loss is inf") and "text=" in message
    assert "no checkpoint was written" in message
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert not (out / "final").exists()


def test_diverging_weights_stop_the_run_and_never_become_a_checkpoint(data_root, tmp_path):
    # A finite but absurd learning rate: the first update throws the weights to ~1e30, the next
    # forward pass overflows.
    recipe = load_recipe(_recipe(tmp_path, **{"optimizer.lr_groups": [{"name": "all", "pattern": "", "lr": 1.0e30}],
                                              "optimizer.max_grad_norm": None, "schedule.kind": "constant",
                                              "schedule.warmup_ratio": 0.0}))
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"^step \d+: .*not finite.*stopped before updating the weights") as caught:
        Trainer(recipe, data_root, out, progress=False).run()
    assert len(str(caught.value).splitlines()) == 1
    saved = sorted((out / "checkpoints").glob("step-*"))
    for checkpoint in saved:
        assert _all_finite(checkpoint / "trainable.safetensors"), checkpoint.name
        assert _all_finite(checkpoint / "optimizer.safetensors"), checkpoint.name
    if saved:
        assert f"the newest checkpoint is {saved[-1].name}" in str(caught.value)
    assert not (out / "final").exists()
    for line in (out / "log.jsonl").read_text().splitlines() if (out / "log.jsonl").exists() else []:
        assert all(v == v and abs(v) != float("inf") for k, v in json.loads(line).items() if isinstance(v, float))


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory) -> Path:
    """A complete 4-step run: checkpoints of steps 1, 2, 3 (keep 3) and final/."""
    directory = tmp_path_factory.mktemp("finished_run")
    out = directory / "run"
    Trainer(load_recipe(_recipe(directory)), data_root, out, progress=False).run()
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        "step-00000001", "step-00000002", "step-00000003"]
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's values: the file still parses
    path.write_bytes(bytes(data))


def _nan_tensor_with_a_fresh_manifest(directory: Path) -> None:
    """What a buggy writer would leave: NaN weights whose checksum is right."""
    tensors = load_file(str(directory / "trainable.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(directory / "trainable.safetensors"))
    (directory / MANIFEST).unlink()
    write_manifest(directory)


def _drop_key_with_a_fresh_manifest(directory: Path) -> None:
    state = json.loads((directory / "trainer_state.json").read_text())
    del state["step"]
    (directory / "trainer_state.json").write_text(json.dumps(state))
    (directory / MANIFEST).unlink()
    write_manifest(directory)


DAMAGE = {
    "truncated tensors": (lambda d: _truncate(d / "trainable.safetensors"), "truncated or replaced"),
    "empty tensors": (lambda d: (d / "trainable.safetensors").write_bytes(b""), "truncated or replaced"),
    "garbage state json": (lambda d: (d / "trainer_state.json").write_text("{not json"), "trainer_state.json"),
    "truncated state json": (lambda d: _truncate(d / "trainer_state.json"), "trainer_state.json"),
    "missing optimizer file": (lambda d: (d / "optimizer.safetensors").unlink(), "optimizer.safetensors is missing"),
    "edited state (a key removed)": (lambda d: _drop_key_with_a_fresh_manifest(d), "lacks its step"),
    "flipped bytes": (lambda d: _flip_a_byte(d / "trainable.safetensors"), "does not match its SHA-256"),
    "NaN tensors": (_nan_tensor_with_a_fresh_manifest, "NaN or infinite"),
    "garbage manifest": (lambda d: (d / MANIFEST).write_text("[1, 2"), "manifest.json is unreadable"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_reports_a_damaged_newest_checkpoint_and_falls_back(finished_run, data_root, tmp_path, capsys, kind):
    damage, reason = DAMAGE[kind]
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    newest = out / "checkpoints" / "step-00000003"
    damage(newest)
    capsys.readouterr()
    summary = Trainer(load_recipe(_recipe(tmp_path)), data_root, out, resume=True, progress=False).run()
    lines = capsys.readouterr().out.splitlines()
    report = [line for line in lines if "is damaged" in line]
    assert len(report) == 1 and "step-00000003" in report[0] and reason in report[0]
    assert any("resuming from" in line and "step-00000002" in line and "newest intact" in line for line in lines)
    assert summary["steps"] == 4
    # resumed from step 2, it ends exactly where the uninterrupted run ended
    a = load_file(str(finished_run / "final" / "model.safetensors"))
    b = load_file(str(out / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_stops_with_one_line_when_no_checkpoint_is_intact(finished_run, data_root, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    for checkpoint in (out / "checkpoints").iterdir():
        (checkpoint / "optimizer.json").write_text("")
    with pytest.raises(UserError) as caught:
        Trainer(load_recipe(_recipe(tmp_path)), data_root, out, resume=True, progress=False).run()
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and message.startswith("no intact checkpoint to resume from")
    assert all(f"step-0000000{i}: optimizer.json is 0 bytes" in message for i in (1, 2, 3))


def test_checkpoints_carry_a_manifest_that_verify_checks(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)

    def write(directory: Path) -> None:
        (directory / "a.bin").write_bytes(b"abc")
        (directory / "trainer_state.json").write_text("{}")

    path = manager.save(1, write)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["files"]["a.bin"] == {
        "size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}  # SHA-256("abc")
    verify(path, required=("a.bin",))
    with pytest.raises(CheckpointDamaged, match="does not list b.bin"):
        verify(path, required=("b.bin",))
    (path / "a.bin").write_bytes(b"abd")
    with pytest.raises(CheckpointDamaged, match="a.bin does not match its SHA-256"):
        verify(path)


def test_a_log_whose_last_line_was_cut_off_resumes(finished_run, data_root, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    with open(out / "log.jsonl", "a") as handle:
        handle.write('{"step": 5, "loss": 1.2, "te')
    summary = Trainer(load_recipe(_recipe(tmp_path)), data_root, out, resume=True, progress=False).run()
    assert summary["steps"] == 4
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert (out / "loss_curve.png").stat().st_size > 0


# ----------------------------------------------------------------------------- records checked up front


@pytest.fixture()
def root_missing_one_image(data_root, tmp_path) -> tuple[Path, str, int]:
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    records = json.loads((root / "train.json").read_text())
    image = records[-1]["image"]  # the last image: a short run may never draw it
    (root / image).unlink()
    return root, image, sum(1 for r in records if r["image"] == image)


def test_an_unusable_record_stops_the_run_before_the_first_step(root_missing_one_image, tmp_path):
    root, image, count = root_missing_one_image
    out = tmp_path / "run"
    with pytest.raises(UserError) as caught:
        Trainer(load_recipe(_recipe(tmp_path)), root, out, progress=False).run()
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{count} of ") and "training samples cannot be used" in message
    assert "train.json:" in message and str(root / image) in message and "--skip-bad" in message
    assert not (out / "log.jsonl").exists() and not (out / "checkpoints").exists()


def test_skip_bad_leaves_unusable_records_out_and_counts_them(root_missing_one_image, tmp_path, capsys):
    from instructsam_core.cli import main

    root, image, count = root_missing_one_image
    out = tmp_path / "run"
    code = main(["train", "--recipe", str(_recipe(tmp_path)), "--data-root", str(root), "--output", str(out),
                 "--quiet", "--skip-bad"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert f"left out {count} of 12 training samples that cannot be used" in stdout
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["unusable_samples"] == count and summary["steps"] == 4
    assert (out / "final" / "model.safetensors").exists()
