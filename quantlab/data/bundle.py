"""What a dataset builder returns: train / validation / test splits and the shape facts models need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from quantlab.errors import ConfigError


@dataclass
class DataBundle:
    name: str
    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    calib: Dataset | None = None  # the training images with the evaluation transform (PTQ calibration)

    @property
    def calibration(self) -> Dataset:
        """Where PTQ calibration batches come from: training images, without augmentation."""
        return self.calib if self.calib is not None else self.train

    def checked(self, num_classes: int, in_channels: int, image_size: int) -> DataBundle:
        """The bundle, once the facts its YAML states match it (check_facts)."""
        stated = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
        check_facts(self.name, stated, {key: getattr(self, key) for key in stated})
        return self

    @property
    def top5(self) -> bool:
        """Report top-5 accuracy where the dataset has at least 100 classes."""
        return self.num_classes >= 100


VAL_SPLITS = ("random", "last")


def check_val_split(how: str) -> str:
    """`dataset.val_split` is random or last (a ConfigError naming the field otherwise)."""
    if how not in VAL_SPLITS:
        raise ConfigError(f"dataset.val_split={how!r}: must be random or last")
    return how


def split_indices(
    n: int, val_size: int | float, seed: int, how: str = "random"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve a validation split out of `n` training samples.

    `val_size` is a count (int ≥ 1) or a fraction in (0, 1); 0 means no validation split. `how`:
    `random`, a random subset drawn with `seed` (the same (n, val_size, seed) always gives the same
    split), or `last`, the last `val_size` samples in the dataset's own order (md-bnn's
    `indices[45000:]` on CIFAR). Returns (train_indices, val_indices), each in increasing order.
    """
    check_val_split(how)
    if isinstance(val_size, float) and 0 < val_size < 1:
        val_size = int(round(n * val_size))
    val_size = int(val_size)
    if not 0 <= val_size < n:
        raise ValueError(f"dataset.val_size={val_size}: must be in 0..{n - 1} (the training set has {n})")
    if how == "last":
        return torch.arange(n - val_size), torch.arange(n - val_size, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


@dataclass(frozen=True)
class Validation:
    """How a builder carves its validation split from the training set: `size` images (a count or a
    fraction; 0: none), chosen `split` = random (with `seed`) or last, served with the evaluation
    transform or, with `augment`, the training augmentation (md-bnn's validation)."""

    size: int | float = 5000
    seed: int = 0
    split: str = "random"
    augment: bool = False

    def indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train_indices, val_indices) of a training set of `n` images."""
        return split_indices(n, self.size, self.seed, self.split)


class TensorSplit(Dataset):
    """An in-memory split: images `x` (N, C, H, W) float and labels `y` (N,) long."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x, self.y = x, y.long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Transformed(Dataset):
    """A subset of a base dataset (samples as the base returns them) with its own transform."""

    def __init__(self, base: Dataset, indices: Any, transform: Any = None) -> None:
        self.base, self.indices, self.transform = base, [int(i) for i in indices], transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        image, label = self.base[self.indices[i]]
        return (self.transform(image) if self.transform is not None else image), label


def check_facts(name: str, stated: dict[str, int], actual: dict[str, int]) -> None:
    """The facts a dataset's YAML states (num_classes, in_channels, image_size: what the models read)
    equal the dataset's own; a wrong one is one ConfigError naming the key (facts, not settings)."""
    for key, given in stated.items():
        if given != actual[key]:
            raise ConfigError(f"dataset.{key}={given}: {name} has {actual[key]}")
