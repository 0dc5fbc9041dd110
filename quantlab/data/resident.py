"""Device-resident image datasets: a split decoded once to uint8, augmented per batch on its device.

For every dataset of fixed-size images that fits in memory (MNIST, Fashion-MNIST, CIFAR-10/100,
SVHN, TinyImageNet), the images are decoded once into one uint8 tensor (N, C, H, W) that the loader
moves to the training device. Each batch is gathered from it by index, cropped and flipped there
with an independent crop offset and flip per sample, and normalized — no per-sample Python, no PIL,
no worker processes (the practice of airbench / hlb-CIFAR10, which keep CIFAR on the GPU).

Equivalence with torchvision (tests/test_resident.py):
- without augmentation a batch equals `ToTensor()` then `Normalize(mean, std)` bit for bit
  (the same float32 operations: x / 255, − mean, / std);
- the augmentation is `RandomCrop(size, padding=p)` (zero padding, offsets uniform over the
  (2p + 1)² positions) then `RandomHorizontalFlip()` (p = ½), with the same result as torchvision's
  functional transforms applied with the same offsets and flips;
- its randomness derives from (seed, epoch, batch) alone, so a resumed run sees the same batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from quantlab.errors import ConfigError

LOADERS = ("auto", "resident", "torchvision")


def check_loader(loader: str) -> str:
    """`dataset.loader` is auto, resident or torchvision (a ConfigError naming the field otherwise)."""
    if loader not in LOADERS:
        raise ConfigError(f"dataset.loader={loader!r}: must be auto, resident or torchvision")
    return loader


@dataclass(frozen=True)
class Augment:
    """RandomCrop(image size, padding) + RandomHorizontalFlip, drawn per sample."""

    padding: int = 0  # crop offsets in 0..2·padding on each axis (0: no crop)
    flip: bool = False

    @property
    def active(self) -> bool:
        return self.padding > 0 or self.flip


class ImageStore:
    """One uint8 tensor (N, C, H, W) and its labels, shared by the splits cut from it, with one copy
    per device it has been asked for (the training and calibration loaders share it)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), not {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images.contiguous(), labels.long()
        self._copies: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(images, labels) on `device`, moved there once."""
        key = str(device)
        if key not in self._copies:
            if device.type == "cpu":
                self._copies[key] = (self.images, self.labels)
            else:
                try:
                    self._copies[key] = (self.images.to(device), self.labels.to(device))
                except torch.OutOfMemoryError:
                    gib = self.nbytes / 2**30
                    raise ConfigError(
                        f"dataset.loader=resident: the decoded images ({gib:.2f} GiB) do not fit on "
                        f"{device}; use dataset.loader=torchvision"
                    ) from None
        return self._copies[key]


class ResidentImages(Dataset):
    """A split of an `ImageStore`: `indices` into it, the normalization, and the augmentation (None
    for evaluation splits). Indexing it gives one sample as torchvision's evaluation transform would
    (float, normalized); `ResidentLoader` serves whole batches."""

    def __init__(
        self,
        store: ImageStore,
        indices: Tensor | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None = None,
    ) -> None:
        self.store = store
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != store.images.shape[1] or len(self.std) != store.images.shape[1]:
            raise ValueError(f"mean/std need {store.images.shape[1]} channels")
        self.augment = augment if augment is not None and augment.active else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        j = self.indices[i]
        x = normalize(self.store.images[j : j + 1], self.mean, self.std)[0]
        return x, self.store.labels[j]

    def evaluation(self) -> ResidentImages:
        """The same images without augmentation (PTQ calibration)."""
        return ResidentImages(self.store, self.indices, self.mean, self.std, None)


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """uint8 (B, C, H, W) -> float32 (x / 255 − mean) / std: torchvision's ToTensor + Normalize, the
    same operations in the same order (so bit for bit the same values)."""
    shape = (1, -1, 1, 1)  # a no-op for (1, C, 1, 1) float32 tensors already on the device
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(shape)
    return images.float().div_(255).sub_(m).div_(s)


def augment_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of one batch's crop offsets and flips: a function of (seed, epoch, batch) alone."""
    return ((int(seed) * 1_000_003 + int(epoch)) * 1_000_003 + int(batch) + 7_777) % (2**63)


def draw_augment(n: int, augment: Augment, seed: int) -> tuple[Tensor, Tensor]:
    """Per sample: crop offsets (n, 2) as (top, left) in 0..2·padding, and flips (n,) in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 2 * augment.padding + 1, (n, 2), generator=g)
    flips = torch.randint(0, 2, (n,), generator=g) if augment.flip else torch.zeros(n, dtype=torch.long)
    return offsets, flips


def crop_flip(images: Tensor, padding: int, offsets: Tensor, flips: Tensor) -> Tensor:
    """Each image zero-padded by `padding`, cropped back to its size at its (top, left) offset, then
    mirrored left-right where its flip is 1: one indexing of the padded batch's window view (every
    h × w window of every image), on the images' device."""
    n, c, h, w = images.shape
    device = images.device
    offsets, flips = offsets.to(device), flips.to(device).bool()
    padded = F.pad(images, (padding,) * 4) if padding else images
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (n, c, 2p+1, 2p+1, h, w), a view
    out = windows[torch.arange(n, device=device), :, offsets[:, 0], offsets[:, 1]]  # (n, c, h, w)
    return torch.where(flips[:, None, None, None], out.flip(-1), out)


# -- decoding ---------------------------------------------------------------------------------------


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: what a SLURM job was given)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def decode_files(paths: Sequence[str], threads: int = 8) -> Tensor:
    """Decode image files (RGB) into one uint8 tensor (N, 3, H, W); every image must be H x W."""
    import numpy as np
    from PIL import Image

    def load(path: str) -> Any:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))

    with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL decodes outside the GIL
        arrays = list(pool.map(load, paths))
    if not arrays:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ConfigError(
            f"dataset.loader=resident: the images have {len(shapes)} different sizes "
            f"({sorted(shapes)[:3]} ...); use dataset.loader=torchvision"
        )
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
