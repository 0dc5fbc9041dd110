"""torchvision-backed datasets: MNIST, Fashion-MNIST, CIFAR-10/100, SVHN, TinyImageNet, ImageNet.

Each builder returns train (augmented) / val (carved from train: `dataset.val_size` images, a random
subset drawn with `dataset.split_seed` or the last ones (`dataset.val_split`), with the evaluation
transform or, `dataset.val_augment=true`, the training augmentation) / test. The root comes from
`dataset.root` or the QUANTLAB_DATA environment variable.
Missing files raise a one-line error naming the expected layout and how to supply it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision import transforms as T
from torchvision.datasets.utils import check_integrity

from quantlab.data.bundle import DataBundle, Transformed, Validation
from quantlab.data.resident import (
    Augment,
    ImageStore,
    ResidentImages,
    available_cores,
    check_loader,
    decode_files,
)
from quantlab.errors import ConfigError, QuantlabError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DatasetMissing(QuantlabError):
    """The dataset's files are not where the config says (the message names the expected layout)."""


def _root(name: str, root: str | None, layout: str, download_hint: bool) -> Path:
    how = "pass dataset.root=<dir> or set QUANTLAB_DATA=<dir>"
    if download_hint:
        how += ", or add dataset.download=true"
    if root in (None, ""):
        raise DatasetMissing(f"{name}: no data root: {how} (expected {layout})")
    return Path(os.path.expanduser(str(root)))


def _missing(name: str, root: Path, layout: str, download_hint: bool) -> DatasetMissing:
    how = "pass dataset.root=<dir> or set QUANTLAB_DATA=<dir>"
    if download_hint:
        how += ", or add dataset.download=true"
    return DatasetMissing(f"{name}: files not found under {root}: expected {layout}; {how}")


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files lie under its root: `text` for messages, `paths` to look for."""

    text: str
    paths: tuple[str, ...]
    downloadable: bool


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_FOLDERS = "<root>/train/<class>/<image> and <root>/val/<class>/<image>"
LAYOUTS = {
    **{
        name: Layout(
            f"<root>/{folder}/raw/{{{', '.join(_MNIST_FILES)}}}",
            tuple(f"{folder}/raw/{f}" for f in _MNIST_FILES),
            True,
        )
        for name, folder in (("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"))
    },
    "cifar10": Layout(
        "<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the python pickle version)",
        tuple(f"cifar-10-batches-py/{f}" for f in _CIFAR10_FILES),
        True,
    ),
    "cifar100": Layout(
        "<root>/cifar-100-python/{train, test, meta} (the python pickle version)",
        tuple(f"cifar-100-python/{f}" for f in ("train", "test", "meta")),
        True,
    ),
    "svhn": Layout("<root>/{train_32x32.mat, test_32x32.mat}", ("train_32x32.mat", "test_32x32.mat"), True),
    "tinyimagenet": Layout(f"{_FOLDERS} (val regrouped by class)", ("train", "val"), False),
    "imagenet": Layout(_FOLDERS, ("train", "val"), False),
}


def check_present(name: str, root: str | None, download: bool = False) -> None:
    """Before anything is created: the files of dataset `name` are under `root` (or will be
    downloaded); nothing is read. Datasets without a root (digits, glyphs) pass."""
    layout = LAYOUTS.get(name)
    if layout is None or (download and layout.downloadable):
        return
    path = _root(name, root, layout.text, layout.downloadable)
    if not all((path / p).exists() for p in layout.paths):
        raise _missing(name, path, layout.text, layout.downloadable)


def _open_pair(
    name: str,
    root: str | None,
    layout: str,
    open_split: Callable[[str, bool], Dataset],
    files: Sequence[str] = (),
):
    """(train, test) from a torchvision class that has a downloader. Missing files, and a file that
    cannot be read (a truncated copy; `files` are the ones to look at), are one-line errors."""
    path = _root(name, root, layout, True)
    try:
        return open_split(str(path), True), open_split(str(path), False)
    except RuntimeError as e:
        raise _missing(name, path, layout, True) from e
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, OSError) as e:
        bad = next((path / f for f in files if not _unpickles(path / f)), None)
        where = str(bad) if bad is not None else f"a file under {path}"
        raise DatasetMissing(
            f"{name}: {where} cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:80]}); "
            "it is truncated or corrupt: copy it again"
        ) from None


def _unpickles(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            pickle.load(f, encoding="latin1")
    except Exception:
        return False
    return True


def _checksum_mismatch(name: str, path: Path) -> DatasetMissing:
    return DatasetMissing(
        f"{name}: {path} fails torchvision's md5 checksum (a partial or different copy); copy it again, "
        "or pass dataset.verify=false to skip the check"
    )


def _split(
    name: str,
    train_base: Dataset,
    test_base: Dataset,
    train_tf: Callable,
    eval_tf: Callable,
    validation: Validation,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> DataBundle:
    train_idx, val_idx = validation.indices(len(train_base))  # type: ignore[arg-type]
    val_tf = train_tf if validation.augment else eval_tf
    return DataBundle(
        name=name,
        train=Transformed(train_base, train_idx, train_tf),
        val=Transformed(train_base, val_idx, val_tf) if len(val_idx) else None,
        test=Transformed(test_base, range(len(test_base)), eval_tf),  # type: ignore[arg-type]
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        calib=Transformed(train_base, train_idx, eval_tf),
    )


def _loader_kind(name: str, loader: str, resident_ok: bool = True) -> str:
    """`auto`: resident where the dataset's images have one size (every dataset here but ImageNet)."""
    if check_loader(loader) == "auto":
        return "resident" if resident_ok else "torchvision"
    if loader == "resident" and not resident_ok:
        raise ConfigError(
            f"dataset.loader=resident: {name} is not kept on the device (images of many sizes, too large "
            "to hold decoded); use dataset.loader=torchvision or auto"
        )
    return loader


def small_bundle(
    name: str,
    loader: str,
    bases: tuple[Dataset, Dataset],
    decode: Callable[[Dataset], tuple[Tensor, Tensor]],
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    augment: bool,
    crop: int,
    flip: bool,
    validation: Validation,
    num_classes: int,
) -> DataBundle:
    """Train (augmented: random crop `crop` with padding 4, flip where `flip`) / val / test splits,
    through torchvision's transforms (`loader=torchvision`) or decoded once and kept on the training
    device (`resident`; `decode(base)` gives its uint8 (N, C, H, W) images and labels). The
    validation split is augmented like the training split where `validation.augment` says so."""
    train_base, test_base = bases
    mean, std = stats
    in_channels = len(mean)
    if _loader_kind(name, loader) == "resident":
        train_store, test_store = ImageStore(*decode(train_base)), ImageStore(*decode(test_base))
        train_idx, val_idx = validation.indices(len(train_store.labels))
        policy = Augment(padding=4 if augment else 0, flip=augment and flip)
        train = ResidentImages(train_store, train_idx, mean, std, policy)
        val_policy = policy if validation.augment else None
        return DataBundle(
            name=name,
            train=train,
            val=ResidentImages(train_store, val_idx, mean, std, val_policy) if len(val_idx) else None,
            test=ResidentImages(test_store, range(len(test_store.labels)), mean, std),
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=crop,
            calib=train.evaluation(),
        )
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    train_tf = []
    if augment:
        train_tf.append(T.RandomCrop(crop, padding=4))
    if augment and flip:
        train_tf.append(T.RandomHorizontalFlip())
    return _split(
        name,
        train_base,
        test_base,
        T.Compose(train_tf + norm),
        T.Compose(norm),
        validation,
        num_classes,
        in_channels,
        crop,
    )


def _hwc(data: Any, labels: Any) -> tuple[Tensor, Tensor]:
    """(N, H, W, C) or (N, H, W) uint8 arrays -> uint8 (N, C, H, W) and long labels."""
    images = torch.as_tensor(data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(labels, dtype=torch.long)


# -- MNIST family: idx files under <root>/<Class>/raw/ -------------------------------------------------


def _mnist_like(cls: type, name: str, mean: float, std: float):
    def build(
        *,
        root: str | None,
        download: bool,
        val_size: int | float,
        split_seed: int,
        val_split: str,
        val_augment: bool,
        augment: bool,
        loader: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
    ) -> DataBundle:
        layout = LAYOUTS[name].text
        train, test = _open_pair(name, root, layout, lambda path, tr: cls(path, train=tr, download=download))

        def decode(base: Dataset) -> tuple[Tensor, Tensor]:
            return _hwc(base.data, base.targets)  # type: ignore[attr-defined]

        stats = ((mean,), (std,))
        return small_bundle(
            name,
            loader,
            (train, test),
            decode,
            stats,
            augment,
            28,
            False,
            Validation(val_size, split_seed, val_split, val_augment),
            10,
        ).checked(num_classes, in_channels, image_size)

    build.__doc__ = f"{name}: 60k/10k 28x28 grayscale digits, 10 classes (torchvision {cls.__name__})."
    return build


mnist = _mnist_like(tvd.MNIST, "mnist", 0.1307, 0.3081)
fashion_mnist = _mnist_like(tvd.FashionMNIST, "fashion_mnist", 0.2860, 0.3530)


# -- CIFAR and SVHN: md5 verification is optional so that small, test-written files load too --------


class _CIFAR10(tvd.CIFAR10):
    verify = True
    label = "cifar10"

    def _check_integrity(self) -> bool:
        base = Path(self.root) / self.base_folder
        if self.verify:
            for filename, md5 in self.train_list + self.test_list:
                if (base / filename).is_file() and not check_integrity(str(base / filename), md5):
                    raise _checksum_mismatch(self.label, base / filename)
            return super()._check_integrity()
        return all((base / f).is_file() for f, _ in self.train_list + self.test_list)

    @classmethod
    def files(cls) -> list[str]:
        """The pickles under the root, for naming the one that cannot be read."""
        return [f"{cls.base_folder}/{f}" for f, _ in [*cls.train_list, *cls.test_list]] + [
            f"{cls.base_folder}/{cls.meta['filename']}"
        ]

    def _load_meta(self) -> None:
        if self.verify:
            return super()._load_meta()
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _CIFAR100(_CIFAR10, tvd.CIFAR100):
    """CIFAR-100 with the same optional md5 verification."""

    label = "cifar100"


class _SVHN(tvd.SVHN):
    verify = True

    def _check_integrity(self) -> bool:
        path = Path(self.root) / self.filename
        if self.verify:
            if path.is_file() and not check_integrity(str(path), self.file_md5):
                raise _checksum_mismatch("svhn", path)
            return super()._check_integrity()
        return path.is_file()


CIFAR_STATS = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar(classes: int):
    cls = _CIFAR10 if classes == 10 else _CIFAR100
    name = f"cifar{classes}"

    def build(
        *,
        root: str | None,
        download: bool,
        val_size: int | float,
        split_seed: int,
        val_split: str,
        val_augment: bool,
        augment: bool,
        verify: bool,
        loader: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
    ) -> DataBundle:
        layout = LAYOUTS[name].text
        cls.verify = verify
        train, test = _open_pair(
            name, root, layout, lambda path, tr: cls(path, train=tr, download=download), cls.files()
        )

        def decode(base: Dataset) -> tuple[Tensor, Tensor]:
            return _hwc(base.data, base.targets)  # type: ignore[attr-defined]

        return small_bundle(
            name,
            loader,
            (train, test),
            decode,
            CIFAR_STATS[classes],
            augment,
            32,
            True,
            Validation(val_size, split_seed, val_split, val_augment),
            classes,
        ).checked(num_classes, in_channels, image_size)

    build.__doc__ = (
        f"CIFAR-{classes}: 50k/10k 32x32 colour images; augmentation: random crop 32 pad 4 + flip."
    )
    return build


cifar10 = _cifar(10)
cifar100 = _cifar(100)


def svhn(
    *,
    root: str | None,
    download: bool,
    val_size: int | float,
    split_seed: int,
    val_split: str,
    val_augment: bool,
    augment: bool,
    verify: bool,
    loader: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> DataBundle:
    """SVHN (cropped digits, 73k/26k 32x32); augmentation: random crop 32 pad 4 (no flip: digits)."""
    layout = LAYOUTS["svhn"].text
    _SVHN.verify = verify
    splits = {True: "train", False: "test"}
    train, test = _open_pair(
        "svhn", root, layout, lambda path, tr: _SVHN(path, split=splits[tr], download=download)
    )

    def decode(base: Dataset) -> tuple[Tensor, Tensor]:  # SVHN keeps (N, C, H, W) already
        return torch.as_tensor(base.data).contiguous(), torch.as_tensor(base.labels, dtype=torch.long)  # type: ignore[attr-defined]

    stats = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
    return small_bundle(
        "svhn",
        loader,
        (train, test),
        decode,
        stats,
        augment,
        32,
        False,
        Validation(val_size, split_seed, val_split, val_augment),
        10,
    ).checked(num_classes, in_channels, image_size)


# -- ImageFolder trees: TinyImageNet and ImageNet ----------------------------------------------------


def _image_folder(name: str, root: str | None, layout: str) -> tuple[tvd.ImageFolder, tvd.ImageFolder, Path]:
    path = _root(name, root, layout, False)
    if not (path / "train").is_dir() or not (path / "val").is_dir():
        raise _missing(name, path, layout, False)
    try:
        return tvd.ImageFolder(str(path / "train")), tvd.ImageFolder(str(path / "val")), path
    except (FileNotFoundError, RuntimeError) as e:
        raise _missing(name, path, layout, False) from e


def tinyimagenet(
    *,
    root: str | None,
    val_size: int | float,
    split_seed: int,
    val_split: str,
    val_augment: bool,
    augment: bool,
    loader: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> DataBundle:
    """TinyImageNet (200 classes, 64x64) in ImageFolder layout; the official val set is the test split.

    The official val/ folder (images/ + val_annotations.txt) must be regrouped into one folder per
    class first. Augmentation: random crop 64 pad 4 + flip.
    """
    layout = LAYOUTS["tinyimagenet"].text
    train, test, _ = _image_folder("tinyimagenet", root, layout)

    def decode(base: Dataset) -> tuple[Tensor, Tensor]:  # every image decoded once (JPEG -> uint8)
        paths = [path for path, _ in base.samples]  # type: ignore[attr-defined]
        return decode_files(paths, threads=available_cores()), torch.tensor(base.targets)  # type: ignore[attr-defined]

    stats = (IMAGENET_MEAN, IMAGENET_STD)
    return small_bundle(
        "tinyimagenet",
        loader,
        (train, test),
        decode,
        stats,
        augment,
        64,
        True,
        Validation(val_size, split_seed, val_split, val_augment),
        len(train.classes),
    ).checked(num_classes, in_channels, image_size)


def imagenet(
    *,
    root: str | None,
    val_size: int | float,
    split_seed: int,
    val_split: str,
    val_augment: bool,
    augment: bool,
    image_size: int,
    loader: str,
    num_classes: int,
    in_channels: int,
) -> DataBundle:
    """ImageNet (ILSVRC-2012) in ImageFolder layout; the official val set is the test split.

    Train: random-resized crop 224 + flip; eval: resize 256, center crop 224.
    """
    layout = LAYOUTS["imagenet"].text
    _loader_kind("imagenet", loader, resident_ok=False)
    train, test, _ = _image_folder("imagenet", root, layout)
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    resize = int(round(image_size * 256 / 224))
    eval_tf = T.Compose([T.Resize(resize), T.CenterCrop(image_size), *norm])
    train_tf = (
        T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *norm]) if augment else eval_tf
    )
    return _split(
        "imagenet",
        train,
        test,
        train_tf,
        eval_tf,
        Validation(val_size, split_seed, val_split, val_augment),
        len(train.classes),
        3,
        image_size,
    ).checked(num_classes, in_channels, image_size)
