"""The data order of a run: a pure function of (seed, step), so a resume continues exactly.

The examples are shuffled once per epoch with a generator seeded by (seed, epoch); the run
reads that stream in order. Optimizer step s consumes the global positions
[s * G, (s + 1) * G), G = per_device * world_size * grad_accum; micro-batch m of rank r takes
the slice starting at s * G + (m * world_size + r) * per_device. Every rank therefore sees
different examples, and a run resumed at step s reads what the uninterrupted run would have.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of dataset indices) for steps [start_step, total_steps)."""

    def __init__(
        self,
        num_examples: int,
        seed: int,
        per_device: int,
        grad_accum: int,
        world_size: int,
        rank: int,
        total_steps: int,
        start_step: int = 0,
    ) -> None:
        if num_examples <= 0:
            raise ValueError("no examples to sample from")
        self.n = num_examples
        self.seed = seed
        self.per_device = per_device
        self.grad_accum = grad_accum
        self.world_size = world_size
        self.rank = rank
        self.total_steps = total_steps
        self.start_step = start_step
        self._orders: dict[int, torch.Tensor] = {}

    @property
    def global_batch(self) -> int:
        return self.per_device * self.world_size * self.grad_accum

    def order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(self.n, generator=generator)}  # keep one epoch cached
        return self._orders[epoch]

    def index_at(self, position: int) -> int:
        return int(self.order(position // self.n)[position % self.n])

    def micro_batch(self, step: int, micro: int) -> list[int]:
        start = step * self.global_batch + (micro * self.world_size + self.rank) * self.per_device
        return [self.index_at(start + k) for k in range(self.per_device)]

    def epoch_at(self, step: int) -> float:
        return step * self.global_batch / self.n

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            for micro in range(self.grad_accum):
                yield self.micro_batch(step, micro)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.grad_accum


def steps_for_epochs(num_examples: int, epochs: float, global_batch: int) -> int:
    return max(1, math.ceil(num_examples * epochs / global_batch))


def lr_factor(step: int, total_steps: int, warmup_ratio: float, kind: str) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based): linear warmup,
    then cosine decay to 0 (or constant)."""
    warmup = int(math.ceil(warmup_ratio * total_steps))
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
