"""Resumable epoch loaders.

The order of epoch e is a permutation drawn from a generator seeded by (seed, e) alone, so a run
resumed at batch k of epoch e sees exactly the batches an uninterrupted run would have seen
(resident splits draw their augmentation from (seed, epoch, batch); a DataLoader's transforms draw
from the global torch RNG, which the checkpoint restores; with num_workers > 0 the workers'
augmentation streams are reseeded and only the order is exact).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from quantlab.data.bundle import TensorSplit
from quantlab.data.resident import (
    ResidentImages,
    augment_seed,
    available_cores,
    crop_flip,
    draw_augment,
    normalize,
)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Shard:
    """Process `rank` of `world` taking part in one run: it gets the rank-th of `world` contiguous
    parts of every global batch (all processes draw the same epoch order)."""

    rank: int = 0
    world: int = 1

    def part(self, batch: Tensor) -> Tensor:
        return batch if self.world == 1 else torch.tensor_split(batch, self.world)[self.rank]

    def size(self, batch_size: int) -> int:
        return -(-batch_size // self.world)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch)))


class EpochLoader(ABC):
    """Common interface: `len(loader)` batches per epoch and `loader.iterate(epoch, start_batch)`."""

    batch_size: int

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def iterate(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from batch `start_batch` on, in the epoch's fixed order."""

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate(0, 0)


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


class _Ordered(EpochLoader):
    """Global batches of `batch_size` in the epoch's fixed order (`epoch_order`), this process's
    `shard` of each, on `device`."""

    def __init__(
        self,
        data: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        device: torch.device,
        shard: Shard = Shard(),
    ) -> None:
        self.n, self.device, self.shard = len(data), device, shard  # type: ignore[arg-type]
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last

    def __len__(self) -> int:
        return _num_batches(self.n, self.batch_size, self.drop_last)


class _InMemoryLoader(_Ordered):
    """Whole batches indexed out of tensors already on `device`, in the epoch's fixed order."""

    def __init__(self, data: Dataset, batch_size: int, **kwargs: Any) -> None:
        super().__init__(data, batch_size, **kwargs)
        self.load(data)

    @abstractmethod
    def load(self, data: Any) -> None:
        """Put the split's tensors on `self.device`."""

    def positions(self, epoch: int, start_batch: int) -> Iterator[tuple[int, Tensor]]:
        """(batch number, the global batch's positions in the split) from `start_batch` on; a
        process of several serves `self.shard.part(...)` of each."""
        order = epoch_order(self.n, self.seed, epoch, self.shuffle).to(self.device)
        for b in range(start_batch, len(self)):
            yield b, order[b * self.batch_size : (b + 1) * self.batch_size]


class TensorLoader(_InMemoryLoader):
    """Batches sliced straight out of in-memory tensors (digits, synthetic): no per-sample overhead."""

    def load(self, data: TensorSplit) -> None:
        self.x, self.y = data.x.to(self.device), data.y.to(self.device)

    def iterate(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        for _, positions in self.positions(epoch, start_batch):
            idx = self.shard.part(positions)
            yield self.x[idx], self.y[idx]


class ResidentLoader(_InMemoryLoader):
    """Batches of a `ResidentImages` split on `device`, in the epoch's fixed order (`epoch_order`),
    augmented where the split says so (training splits; validation with `dataset.val_augment`) with
    randomness from (seed, epoch, batch) alone: an evaluation loader draws new crops and flips for
    each `epoch` it is iterated with."""

    def load(self, data: ResidentImages) -> None:
        device = self.device
        self.data = data
        self.augment = data.augment  # training splits; a validation split only with dataset.val_augment
        self.images, self.labels = data.store.on(device)
        self.indices = data.indices.to(device)
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=device).view(shape)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=device).view(shape)

    def iterate(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        part = self.shard.part
        for b, positions in self.positions(epoch, start_batch):
            idx = self.indices[part(positions)]
            x = self.images[idx]
            if self.augment is not None:  # drawn for the global batch: the same crops on 1 or N processes
                offsets, flips = draw_augment(len(positions), self.augment, augment_seed(self.seed, epoch, b))
                x = crop_flip(x, self.augment.padding, part(offsets), part(flips))
            yield normalize(x, self.mean, self.std), self.labels[idx]


class _EpochSampler(Sampler[int]):
    def __init__(self, n: int) -> None:
        self.indices: Sequence[int] = range(n)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class TorchLoader(_Ordered):
    """A torch DataLoader (for datasets on disk) driven by a per-epoch, resumable order: pinned
    memory on CUDA, persistent workers, `prefetch_factor` batches in flight per worker."""

    def __init__(
        self, data: Dataset, batch_size: int, num_workers: int = 0, prefetch_factor: int = 4, **kwargs: Any
    ) -> None:
        super().__init__(data, batch_size, **kwargs)
        device, shard = self.device, self.shard
        self.sampler = _EpochSampler(self.n)
        self.loader = DataLoader(
            data,
            batch_size=shard.size(batch_size),
            sampler=self.sampler,
            num_workers=num_workers,
            drop_last=self.drop_last,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            generator=torch.Generator().manual_seed(int(self.seed)),
        )

    def iterate(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        order = epoch_order(self.n, self.seed, epoch, self.shuffle)[start_batch * self.batch_size :]
        if self.shard.world > 1:  # this process's part of every global batch
            order = torch.cat([self.shard.part(batch) for batch in order.split(self.batch_size)])
        self.sampler.indices = order.tolist()
        non_blocking = self.device.type == "cuda"
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)


def make_loader(
    data: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_workers: int | str = 0,
    shard: Shard = Shard(),
) -> EpochLoader:
    """Training loaders shuffle and drop the last partial batch; evaluation loaders keep order.

    In-memory splits are served on `device` in whole batches (TensorLoader; ResidentLoader, which
    also augments there); other datasets go through a torch DataLoader with `num_workers` processes
    (`auto`: one per core available to this process). `batch_size` is the global batch: with a
    `shard` of several processes each serves its part of every batch of the same order."""
    device = torch.device(device)
    drop_last = train and len(data) > batch_size  # type: ignore[arg-type]
    common = {"shuffle": train, "seed": seed, "drop_last": drop_last, "device": device, "shard": shard}
    if isinstance(data, TensorSplit):
        return TensorLoader(data, batch_size, **common)
    if isinstance(data, ResidentImages):
        return ResidentLoader(data, batch_size, **common)
    return TorchLoader(data, batch_size, num_workers=resolve_workers(num_workers), **common)


def resolve_workers(num_workers: int | str) -> int:
    """`auto` -> the cores available to this process; else the number itself (≥ 0)."""
    if num_workers == "auto":
        return available_cores()
    workers = int(num_workers)
    if workers < 0:
        raise ValueError(f"trainer.num_workers={workers}: must be auto or ≥ 0")
    return workers
