"""Datasets (torchvision underneath, plus the embedded `digits` and `synthetic`) and loaders."""

from quantlab.data.bundle import DataBundle, split_indices
from quantlab.data.loaders import EpochLoader, Shard, make_loader

__all__ = ["DataBundle", "EpochLoader", "Shard", "make_loader", "split_indices"]
