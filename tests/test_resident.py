"""Device-resident data (issue 16): the batched uint8 pipeline is torchvision's, bit for bit where
there is no randomness and with the same parameters where there is; its crops and flips have
torchvision's distribution; a resumed run sees the same augmented batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF

from quantlab.data import make_loader
from quantlab.data.loaders import epoch_order
from quantlab.data.resident import Augment, ImageStore, ResidentImages, augment_seed, draw_augment
from quantlab.runs.components import build
from quantlab.runs.config import compose
from tests.conftest import make_trainer
from tests.fakedata import FACTS, WRITERS

FIXED_SIZE = ["cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "tinyimagenet"]


def bundle(name: str, root: Path, loader: str, *extra: str):
    """The dataset, built as `quantlab train` builds it (a builder's check is a one-line error)."""
    overrides = [f"dataset={name}", f"dataset.root={root}", "dataset.val_size=6", f"dataset.loader={loader}"]
    overrides += FACTS.get(name, [])
    if name in ("cifar10", "cifar100", "svhn"):
        overrides.append("dataset.verify=false")
    return build(compose([*overrides, *extra]).dataset, "dataset")


def batches(data, train: bool, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(make_loader(data, 8, train=train, seed=3).iterate(epoch))


@pytest.mark.parametrize("name", FIXED_SIZE)
def test_without_augmentation_batches_equal_torchvisions_bit_for_bit(name, tmp_path):
    WRITERS[name](tmp_path)
    resident = bundle(name, tmp_path, "resident", "dataset.augment=false")
    reference = bundle(name, tmp_path, "torchvision", "dataset.augment=false")
    assert isinstance(resident.train, ResidentImages) and not isinstance(reference.train, ResidentImages)
    for split in ("train", "val", "test"):
        for train in (False, True):  # evaluation order, and the shuffled training order of epoch 2
            ours = batches(getattr(resident, split), train, epoch=2)
            theirs = batches(getattr(reference, split), train, epoch=2)
            assert len(ours) == len(theirs) > 0
            for (x, y), (x_ref, y_ref) in zip(ours, theirs, strict=True):
                assert x.dtype == x_ref.dtype == torch.float32
                assert torch.equal(x, x_ref) and torch.equal(y, y_ref), (split, train)
    # PTQ calibration: the training images without augmentation, equal too
    calibration = zip(batches(resident.calibration, True), batches(reference.calibration, True), strict=True)
    assert all(torch.equal(x, x_ref) for (x, _), (x_ref, _) in calibration)


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_augmented_batches_are_torchvisions_transform_with_the_same_offsets_and_flips(name, tmp_path):
    """Each sample of a training batch equals torchvision's pad → crop → (flip) → ToTensor →
    Normalize applied to the same PIL image with the offsets and flip the batch drew."""
    WRITERS[name](tmp_path)
    resident = bundle(name, tmp_path, "resident")
    reference = bundle(name, tmp_path, "torchvision")
    flip = name == "cifar10"  # SVHN digits are not flipped
    assert resident.train.augment == Augment(padding=4, flip=flip)
    mean, std = resident.train.mean, resident.train.std
    loader = make_loader(resident.train, 16, train=True, seed=5)
    epoch = 3
    order = epoch_order(len(resident.train), 5, epoch, True)
    flipped = 0
    for b, (x, y) in enumerate(loader.iterate(epoch)):
        offsets, flips = draw_augment(len(y), resident.train.augment, augment_seed(5, epoch, b))
        flipped += int(flips.sum())
        for k in range(len(y)):
            i = int(order[b * 16 + k])
            image, label = reference.train.base[reference.train.indices[i]]  # the PIL image
            top, left = (int(v) for v in offsets[k])
            expected = TF.crop(TF.pad(image, 4), top, left, 32, 32)
            if flips[k]:
                expected = TF.hflip(expected)
            expected = TF.normalize(TF.to_tensor(expected), mean, std)
            assert torch.equal(x[k], expected) and int(y[k]) == int(label), (b, k)
    assert (flipped > 0) == flip


def test_crop_offsets_are_uniform_over_the_81_positions_and_flips_fair():
    """Read each sample's offset and flip back from the loader's output: images whose pixels encode
    their own row and column. 16,200 draws: Pearson's χ² over the 9 x 9 offsets (80 degrees of
    freedom) stays below 124.8, its 0.1 % critical value; the flip rate within 4 standard errors."""
    n, size, pad = 16_200, 32, 4
    grid = torch.arange(1, size + 1, dtype=torch.uint8)
    image = torch.stack([grid[:, None].expand(size, size), grid[None, :].expand(size, size)])  # rows, cols
    store = ImageStore(image.expand(n, 2, size, size).contiguous(), torch.zeros(n, dtype=torch.long))
    data = ResidentImages(store, range(n), (0.0, 0.0), (1 / 255, 1 / 255), Augment(pad, flip=True))
    counts = torch.zeros(2 * pad + 1, 2 * pad + 1)
    flips = 0
    for x, _ in make_loader(data, 900, train=True, seed=11).iterate(0):
        pixels = x.round().long()  # (x/255 − 0)/(1/255) gives the uint8 values back
        # output pixel (16, 16) is always inside the image: row top + 12 (value + 1), column
        # left + 12, or left + 11 when mirrored (crop column 15)
        centre_row, centre_col, next_col = pixels[:, 0, 16, 16], pixels[:, 1, 16, 16], pixels[:, 1, 16, 17]
        flipped = next_col < centre_col
        top, left = centre_row - 13, centre_col - 13 + flipped.long()
        counts.index_put_((top, left), torch.ones(len(top)), accumulate=True)
        flips += int(flipped.sum())
    expected = n / counts.numel()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert counts.sum() == n and chi2 < 124.8, chi2
    assert abs(flips / n - 0.5) < 4 * (0.25 / n) ** 0.5, flips / n


def test_augmentation_depends_on_seed_epoch_and_batch_alone(tmp_path):
    WRITERS["cifar10"](tmp_path)
    data = bundle("cifar10", tmp_path, "resident").train
    loader = make_loader(data, 8, train=True, seed=2)
    full = list(loader.iterate(4))
    tail = list(make_loader(data, 8, train=True, seed=2).iterate(4, start_batch=3))  # a fresh loader
    torch.manual_seed(123)  # the global RNG plays no part
    for (x, y), (xt, yt) in zip(full[3:], tail, strict=True):
        assert torch.equal(x, xt) and torch.equal(y, yt)
    other_epoch = list(loader.iterate(5))
    assert not torch.equal(full[0][0], other_epoch[0][0])


def test_a_resumed_run_on_resident_cifar_equals_an_uninterrupted_one(tmp_path):
    WRITERS["cifar10"](tmp_path / "data")
    overrides = [
        "dataset=cifar10",
        f"dataset.root={tmp_path / 'data'}",
        "dataset.verify=false",
        "dataset.val_size=20",
        "model=small_cnn",
        "schedule.batch_size=16",
        "schedule.epochs=2",
    ]
    full = make_trainer(overrides, tmp_path / "full")
    assert isinstance(full.data.train, ResidentImages)
    full.fit()
    part = make_trainer(overrides, tmp_path / "part")
    part.fit(until=part.steps_per_epoch + 2)  # stop mid-epoch 2 ...
    part.save_last()
    state = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=False)
    resumed = make_trainer(overrides, tmp_path / "part")  # ... and continue in a new trainer
    resumed.load_state(state)
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loader_setting_is_checked_and_imagenet_stays_on_torchvision(tmp_path):
    from quantlab.errors import ConfigError

    WRITERS["imagenet"](tmp_path)
    assert not isinstance(bundle("imagenet", tmp_path, "auto").train, ResidentImages)
    with pytest.raises(ConfigError, match=r"^dataset.loader=resident: imagenet is not kept on the device"):
        bundle("imagenet", tmp_path, "resident")
    WRITERS["cifar10"](tmp_path)
    with pytest.raises(ConfigError, match=r"^dataset.loader='gpu': must be auto, resident or torchvision$"):
        bundle("cifar10", tmp_path, "gpu")


def test_a_config_from_before_resident_data_keeps_the_torchvision_loader(tmp_path):
    """A run started before `dataset.loader` existed has no such key in its config.yaml: its resume
    must read the data as it was trained, through torchvision, not switch to the resident loader."""
    from omegaconf import open_dict

    root = WRITERS["cifar10"](tmp_path / "data")
    overrides = ["dataset=cifar10", f"dataset.root={root}", "dataset.verify=false", "dataset.val_size=6"]
    from quantlab.runs.config import with_legacy_settings

    cfg = compose(overrides)
    assert isinstance(build(cfg.dataset, "dataset").train, ResidentImages)  # today's default: auto
    with open_dict(cfg):
        del cfg.dataset["loader"]
    old = with_legacy_settings(cfg)  # what resume, ptq and export do with a run's config.yaml
    assert not isinstance(build(old.dataset, "dataset").train, ResidentImages)
