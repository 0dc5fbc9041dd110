"""CIFAR-10-shaped files in the real on-disk format (the python pickle version), of random pixels.

`quantlab bench data` times the loaders on them where no CIFAR-10 is at hand: torchvision's CIFAR10
class reads them exactly as it reads the real download (five `data_batch_<i>` pickles of rows of
3072 bytes — 1024 red, 1024 green, 1024 blue, each row-major 32×32 — a `test_batch`, and
`batches.meta`); open them with `dataset.verify=false` (the md5 sums are the real files').
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"


def write_cifar10_files(root: Path, n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> Path:
    """Write `n_train` training images (over the five batches) and `n_test` test images under
    `root/cifar-10-batches-py/`; returns `root` (what `dataset.root` takes)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / FOLDER
    base.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    for name, n in [*((f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)), ("test_batch", n_test)]:
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({"data": rows, "labels": labels, "batch_label": name}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)
    return Path(root)
