"""Write tiny datasets in the real on-disk formats that torchvision reads.

CIFAR python pickles, MNIST idx files, SVHN .mat files and ImageFolder trees of PNGs — the same
bytes layout as the real downloads, only with few (random) images.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

RNG = np.random.default_rng(0)


def _images(n: int, h: int, w: int, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 20) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        name = f"data_batch_{i}"
        _pickle_batch(base / name, per_batch, "labels", 10)
    _pickle_batch(base / "test_batch", n_test, "labels", 10)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)
    return root


def write_cifar100(root: Path, n_train: int = 100, n_test: int = 20) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    _pickle_batch(base / "train", n_train, "fine_labels", 100)
    _pickle_batch(base / "test", n_test, "fine_labels", 100)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []}, f)
    return root


def _pickle_batch(path: Path, n: int, key: str, classes: int) -> None:
    # CIFAR stores rows of 3072 bytes: 1024 red, 1024 green, 1024 blue, each row-major 32x32.
    data = _images(n, 32, 32).transpose(0, 3, 1, 2).reshape(n, 3072)
    labels = RNG.integers(0, classes, size=n).tolist()
    with open(path, "wb") as f:
        pickle.dump({"data": data, key: labels, "batch_label": path.name}, f)


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, size=n, dtype=np.uint8)
        # idx format: big-endian magic (0x0803 images, 0x0801 labels), then the dimensions.
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return root


def write_svhn(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        x = _images(n, 32, 32).transpose(1, 2, 3, 0)  # (32, 32, 3, N) as in the real files
        y = RNG.integers(1, 11, size=(n, 1)).astype(np.uint8)  # labels 1..10, 10 meaning digit 0
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
    return root


def write_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 64) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(_images(1, size, size)[0]).save(folder / f"img_{i}.png")
    return root


WRITERS = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "mnist": write_mnist,
    "fashion_mnist": lambda root: write_mnist(root, "FashionMNIST"),
    "svhn": write_svhn,
    "tinyimagenet": lambda root: write_image_folder(root, size=64),
    "imagenet": lambda root: write_image_folder(root, size=80),
}

#: The class count of the small ImageFolder trees above (the YAML states the real datasets' 200 / 1000,
#: a fact each builder checks): the overrides that build them.
FACTS = {"tinyimagenet": ["dataset.num_classes=3"], "imagenet": ["dataset.num_classes=3"]}
