"""Checkpoint atomicity, pickle-free optimizer state, the data order and the lr schedule."""
from __future__ import annotations

import math

import pytest
import torch

from instructsam_core.training.checkpoint import STATE_FILE, CheckpointDamaged, CheckpointManager, verify
from instructsam_core.training.sampler import StepBatchSampler, lr_factor, steps_for_epochs
from instructsam_core.training.state_io import flatten_state, load_state, save_state, unflatten_state


def _write_complete(directory):
    (directory / "trainable.safetensors").write_bytes(b"x")
    (directory / STATE_FILE).write_text("{}")


def test_checkpoint_is_published_whole_or_not_at_all(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", keep=2)
    manager.save(2, _write_complete)

    def crash_midway(directory):
        (directory / "trainable.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        manager.save(4, crash_midway)
    # the half-written step 4 is invisible; the latest complete one is still step 2
    assert [step for step, _ in manager.list()] == [2]
    assert manager.latest().name == "step-00000002"
    leftovers = [p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1
    manager.remove_stale_temporaries()
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step-00000002"]


def test_checkpoint_pruning_and_resave(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3):
        manager.save(step, _write_complete)
    assert [step for step, _ in manager.list()] == [2, 3]
    manager.save(3, lambda d: (_write_complete(d), (d / "extra").write_text("new")))
    assert (manager.path_for(3) / "extra").read_text() == "new"
    # every published checkpoint carries a manifest that verifies
    for _, path in manager.list():
        verify(path, required=("trainable.safetensors", STATE_FILE))
    # a step directory that lost its files is listed (resume must report it), and fails verify
    (tmp_path / "step-00000009").mkdir()
    assert manager.latest().name == "step-00000009"
    with pytest.raises(CheckpointDamaged, match="manifest.json is missing"):
        verify(manager.latest())


def test_state_roundtrip_keeps_types():
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(4.0)}},
             "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0], "name": "a", "flag": None}]}
    tensors, skeleton = flatten_state(state)
    back = unflatten_state(tensors, skeleton)
    assert back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert list(back["state"].keys()) == [0]
    assert torch.equal(back["state"][0]["exp_avg"], torch.arange(4.0))
    with pytest.raises(TypeError, match="without pickle"):
        flatten_state({"x": object()})


def test_adamw_state_through_safetensors_continues_identically(tmp_path):
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.randn(5, 3))
    groups = [{"params": [weights], "lr": 0.01, "initial_lr": 0.01}]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.99))
    for _ in range(3):
        (weights ** 2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    save_state(optimizer.state_dict(), tmp_path, "optimizer")
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.bin"))
    twin = torch.nn.Parameter(weights.detach().clone())
    restored = torch.optim.AdamW([{"params": [twin], "lr": 0.5, "initial_lr": 0.5}])
    restored.load_state_dict(load_state(tmp_path, "optimizer"))
    assert restored.param_groups[0]["lr"] == 0.01 and restored.param_groups[0]["betas"] == (0.9, 0.99)
    for opt, param in ((optimizer, weights), (restored, twin)):
        (param ** 2).sum().backward()
        opt.step()
    assert torch.equal(weights, twin)


def test_sampler_ranks_are_disjoint_and_resume_matches():
    kwargs = dict(num_examples=10, seed=1, per_device=2, grad_accum=2, world_size=2, total_steps=5)
    rank0 = list(StepBatchSampler(rank=0, **kwargs))
    rank1 = list(StepBatchSampler(rank=1, **kwargs))
    assert len(rank0) == 10  # 5 steps x 2 micro-batches
    # entries are (example, global position); global batch = 8: within each step the two ranks
    # read 8 consecutive stream positions
    step0 = sorted(rank0[0] + rank0[1] + rank1[0] + rank1[1], key=lambda entry: entry[1])
    assert [position for _, position in step0] == list(range(8))
    assert len({index for index, _ in step0}) == 8
    # every example appears once per epoch: the first 10 positions are a permutation
    stream = sorted((entry for batch in rank0 + rank1 for entry in batch), key=lambda entry: entry[1])
    assert sorted(index for index, _ in stream[:10]) == list(range(10))
    resumed = list(StepBatchSampler(rank=1, start_step=3, **kwargs))
    assert resumed == rank1[6:]
    other_seed = list(StepBatchSampler(rank=0, **{**kwargs, "seed": 2}))
    assert other_seed != rank0


def test_lr_schedule_by_hand():
    # 10 steps, 20 % warmup = 2 steps. Hugging Face's warmup (the release): step / 2 = 0, 0.5, then
    # cosine over the 8 remaining; one step ahead (warmup_from 1): 0.5, 1.0
    assert lr_factor(0, 10, 0.2, "cosine") == 0.0
    assert lr_factor(1, 10, 0.2, "cosine") == pytest.approx(0.5)
    assert lr_factor(0, 10, 0.2, "cosine", warmup_from=1) == pytest.approx(0.5)
    assert lr_factor(1, 10, 0.2, "cosine", warmup_from=1) == pytest.approx(1.0)
    assert lr_factor(2, 10, 0.2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 0.2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lr_factor(9, 10, 0.2, "constant") == 1.0
    assert steps_for_epochs(10, 1, 4) == 3 and steps_for_epochs(10, 2.5, 4) == 7
