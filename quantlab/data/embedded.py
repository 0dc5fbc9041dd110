"""Datasets that need no download: scikit-learn's bundled `digits`, and `synthetic` tensors."""

from __future__ import annotations

import torch

from quantlab.data.bundle import DataBundle, TensorSplit, split_indices


def _standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(), train.std().clamp_min(1e-8)
    return [(t - mean) / std for t in (train, *others)]


def digits(
    *,
    val_size: int | float,
    test_size: int | float,
    split_seed: int,
    val_split: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> DataBundle:
    """scikit-learn's 1,797 real 8x8 handwritten digits (10 classes), shipped inside the package.

    A fixed test split (`test_size`) is held out first (with `split_seed`), then `val_size` of the
    rest is carved for validation (`val_split`: random with `split_seed`, or the last ones).
    Pixels are standardized with training statistics.
    """
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(raw.target, dtype=torch.long)
    rest, test = split_indices(len(y), test_size, split_seed)
    train_local, val_local = split_indices(len(rest), val_size, split_seed + 1, val_split)
    train, val = rest[train_local], rest[val_local]
    x_train, x_val, x_test = _standardize(x[train], x[val], x[test])
    return DataBundle(
        name="digits",
        train=TensorSplit(x_train, y[train]),
        val=TensorSplit(x_val, y[val]) if len(val) else None,
        test=TensorSplit(x_test, y[test]),
        num_classes=10,
        in_channels=1,
        image_size=8,
    ).checked(num_classes, in_channels, image_size)


def synthetic(
    *,
    shape: tuple[int, int, int] | list[int],
    num_classes: int,
    num_train: int,
    num_val: int,
    num_test: int,
    seed: int,
    in_channels: int,
    image_size: int,
) -> DataBundle:
    """Gaussian images of any shape with labels from a fixed random linear teacher (so it is learnable).

    For tests and benchmarks: no files, any (channels, height, width) and class count.
    """
    c, h, w = (int(s) for s in shape)
    if h != w:
        raise ValueError(f"dataset.shape={list(shape)}: images must be square")
    g = torch.Generator().manual_seed(int(seed))
    total = num_train + num_val + num_test
    x = torch.randn(total, c, h, w, generator=g)
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, min(h, 4)).flatten(1)
    teacher = torch.randn(pooled.shape[1], num_classes, generator=g)
    y = (pooled @ teacher).argmax(1)
    a, b = num_train, num_train + num_val
    return DataBundle(
        name="synthetic",
        train=TensorSplit(x[:a], y[:a]),
        val=TensorSplit(x[a:b], y[a:b]) if num_val else None,
        test=TensorSplit(x[b:], y[b:]),
        num_classes=int(num_classes),
        in_channels=c,
        image_size=h,
    ).checked(num_classes, in_channels, image_size)
