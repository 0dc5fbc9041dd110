"""Resumable epoch loaders.

The order of epoch e is a permutation drawn from a generator seeded by (seed, e) alone, so a run
resumed at batch k of epoch e sees exactly the batches an uninterrupted run would have seen
(augmentation draws from the global torch RNG, which the checkpoint restores; with
num_workers > 0 the workers' augmentation streams are reseeded and only the order is exact).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from quantlab.data.bundle import TensorSplit

Batch = tuple[torch.Tensor, torch.Tensor]


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


class TensorLoader(EpochLoader):
    """Batches sliced straight out of in-memory tensors (digits, synthetic): no per-sample overhead."""

    def __init__(
        self,
        data: TensorSplit,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        device: torch.device,
    ) -> None:
        self.x, self.y = data.x.to(device), data.y.to(device)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last

    def __len__(self) -> int:
        return _num_batches(len(self.y), self.batch_size, self.drop_last)

    def iterate(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        order = epoch_order(len(self.y), self.seed, epoch, self.shuffle).to(self.x.device)
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


class _EpochSampler(Sampler[int]):
    def __init__(self, n: int) -> None:
        self.indices: Sequence[int] = range(n)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class TorchLoader(EpochLoader):
    """A torch DataLoader (for datasets on disk) driven by a per-epoch, resumable order."""

    def __init__(
        self,
        data: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        device: torch.device,
        num_workers: int = 0,
    ) -> None:
        self.n = len(data)  # type: ignore[arg-type]
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.device = device
        self.sampler = _EpochSampler(self.n)
        self.loader = DataLoader(
            data,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(int(seed)),
        )

    def __len__(self) -> int:
        return _num_batches(self.n, self.batch_size, self.drop_last)

    def iterate(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        order = epoch_order(self.n, self.seed, epoch, self.shuffle)
        self.sampler.indices = order[start_batch * self.batch_size :].tolist()
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
    num_workers: int = 0,
) -> EpochLoader:
    """Training loaders shuffle and drop the last partial batch; evaluation loaders keep order."""
    device = torch.device(device)
    drop_last = train and len(data) > batch_size  # type: ignore[arg-type]
    if isinstance(data, TensorSplit):
        return TensorLoader(data, batch_size, shuffle=train, seed=seed, drop_last=drop_last, device=device)
    return TorchLoader(data, batch_size, train, seed, drop_last, device, num_workers)
