"""The data order of a run: a pure function of (seed, step), so a resume continues exactly.

The examples are ordered once per epoch with a generator seeded by (seed, epoch); the run
reads that stream in order. Optimizer step s consumes the global positions
[s * G, (s + 1) * G), G = per_device * world_size * grad_accum; micro-batch m of rank r takes
the slice starting at s * G + (m * world_size + r) * per_device. Every rank therefore sees
different examples, and a run resumed at step s reads what the uninterrupted run would have.
Each micro-batch entry is (example index, global position): the position seeds the example's
random draw (dataset.py).

The order is a random permutation, or (`batch.group_by_modality_length`, the release's
`LengthGroupedSampler(group_by_modality=True)`) one grouped by the examples' "modality length":
examples with and without mask annotations are kept in separate groups of G (one optimizer step),
each group sorted by its number of annotations, the groups shuffled.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
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
        lengths: Sequence[int] | None = None,
    ) -> None:
        if num_examples <= 0:
            raise ValueError("no examples to sample from")
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError(f"{len(lengths)} lengths for {num_examples} examples")
        self.lengths = None if lengths is None else list(lengths)
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
            if self.lengths is None:
                order = torch.randperm(self.n, generator=generator)
            else:
                groups = self.world_size * self.grad_accum
                order = torch.tensor(modality_grouped_order(self.lengths, self.per_device, groups, generator))
            self._orders = {epoch: order}  # keep one epoch cached
        return self._orders[epoch]

    def index_at(self, position: int) -> int:
        return int(self.order(position // self.n)[position % self.n])

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int]]:
        """(example index, global position) of each entry of this rank's micro-batch."""
        start = step * self.global_batch + (micro * self.world_size + self.rank) * self.per_device
        return [(self.index_at(start + k), start + k) for k in range(self.per_device)]

    def epoch_at(self, step: int) -> float:
        return step * self.global_batch / self.n

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            for micro in range(self.grad_accum):
                yield self.micro_batch(step, micro)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.grad_accum


def steps_for_epochs(num_examples: int, epochs: float, global_batch: int) -> int:
    return max(1, math.ceil(num_examples * epochs / global_batch))


def lr_factor(step: int, total_steps: int, warmup_ratio: float, kind: str, warmup_from: int = 0) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based): linear warmup over
    ceil(warmup_ratio * total_steps) steps, (step + warmup_from) / warmup, then cosine decay to 0
    (or constant). warmup_from 0 is the Hugging Face schedule (the first update at learning rate
    0); 1 starts one step ahead."""
    warmup = int(math.ceil(warmup_ratio * total_steps))
    if warmup and step < warmup:
        return (step + warmup_from) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _even_chunks(indices: list[int], lengths: Sequence[int], chunks: int) -> list[list[int]]:
    """Split a sorted group into `chunks` micro-batches of balanced total length (longest first
    into the currently shortest chunk); round robin when it does not divide evenly."""
    if len(indices) % chunks:
        return [indices[i::chunks] for i in range(chunks)]
    size = len(indices) // chunks
    out: list[list[int]] = [[] for _ in range(chunks)]
    totals = [0.0] * chunks
    for index in indices:
        shortest = totals.index(min(totals))
        out[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(out[shortest]) == size:
            totals[shortest] = math.inf
    return out


def _length_grouped(lengths: Sequence[int], per_device: int, groups: int, generator: torch.Generator) -> list[int]:
    """A random permutation cut into groups of per_device * groups, each sorted by length (longest
    first) and split into `groups` balanced micro-batches."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    size = per_device * groups
    out: list[int] = []
    for start in range(0, len(order), size):
        group = sorted(order[start : start + size], key=lambda i: lengths[i], reverse=True)
        for chunk in _even_chunks(group, lengths, groups):
            out.extend(chunk)
    return out


def modality_grouped_order(lengths: Sequence[int], per_device: int, groups: int, generator: torch.Generator) -> list[int]:
    """The release's modality-grouped order. `lengths` > 0: examples with that many mask
    annotations; < 0: examples without. Each kind is length-grouped on its own, the full groups of
    both are shuffled together, and the two last (partial) groups close the epoch as one."""
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return _length_grouped(lengths, per_device, groups, generator)
    with_masks = [(i, n) for i, n in enumerate(lengths) if n > 0]
    without = [(i, -n) for i, n in enumerate(lengths) if n < 0]
    size = per_device * groups
    batches: list[list[int]] = []
    tails: list[int] = []
    for kind in (with_masks, without):
        positions = _length_grouped([n for _, n in kind], per_device, groups, generator)
        shuffled = [kind[p][0] for p in positions]
        kind_batches = [shuffled[i : i + size] for i in range(0, len(shuffled), size)]
        batches.extend(kind_batches[:-1])
        tails.extend(kind_batches[-1])
    order = [index for b in torch.randperm(len(batches), generator=generator).tolist() for index in batches[b]]
    return order + sorted(tails)
