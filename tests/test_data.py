"""Each torchvision-backed dataset reads small files written in the real on-disk format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from quantlab.data import make_loader, split_indices
from quantlab.data.resident import ResidentImages
from quantlab.errors import ConfigError, QuantlabError
from quantlab.runs.config import compose
from tests.fakedata import FACTS, WRITERS

# dataset -> (expected train+val size, test size, image shape, classes)
EXPECT = {
    "cifar10": (100, 20, (3, 32, 32), 10),
    "cifar100": (100, 20, (3, 32, 32), 100),
    "mnist": (60, 20, (1, 28, 28), 10),
    "fashion_mnist": (60, 20, (1, 28, 28), 10),
    "svhn": (40, 20, (3, 32, 32), 10),
    "tinyimagenet": (18, 18, (3, 64, 64), 3),
    "imagenet": (18, 18, (3, 224, 224), 3),
}


def build(name: str, root: Path, *extra: str):
    overrides = [
        f"dataset={name}",
        f"dataset.root={root}",
        "dataset.val_size=6",
        *FACTS.get(name, []),
        *extra,
    ]
    if name in ("cifar10", "cifar100", "svhn"):
        overrides.append("dataset.verify=false")  # md5 sums are those of the real downloads
    return instantiate(compose(overrides).dataset)


@pytest.mark.parametrize("loader", ["torchvision", "auto"])
@pytest.mark.parametrize("name", sorted(EXPECT))
def test_reads_real_format(name, loader, tmp_path):
    WRITERS[name](tmp_path)
    bundle = build(name, tmp_path, f"dataset.loader={loader}")
    resident = loader == "auto" and name != "imagenet"  # auto keeps every fixed-size dataset resident
    assert isinstance(bundle.train, ResidentImages) == resident
    n_trainval, n_test, shape, classes = EXPECT[name]
    assert len(bundle.train) + len(bundle.val) == n_trainval
    assert len(bundle.val) == 6 and len(bundle.test) == n_test
    if name not in ("tinyimagenet", "imagenet"):
        assert bundle.num_classes == classes
    x, y = bundle.train[0]
    assert tuple(x.shape) == shape and x.dtype == torch.float32
    assert 0 <= int(y) < bundle.num_classes
    xt, _ = bundle.test[0]
    assert tuple(xt.shape) == shape
    # PTQ calibration reads the training images through the evaluation transform (no augmentation)
    assert len(bundle.calibration) == len(bundle.train)
    if resident:  # the same decoded images, without the augmentation
        assert bundle.calibration.store is bundle.train.store and bundle.calibration.augment is None
        assert torch.equal(bundle.calibration.indices, bundle.train.indices)
    else:
        assert bundle.calibration.transform is bundle.test.transform
    torch.testing.assert_close(bundle.calibration[0][0], bundle.calibration[0][0])
    loader = make_loader(bundle.train, 4, train=True)
    xb, yb = next(iter(loader))
    assert tuple(xb.shape) == (4, *shape) and yb.dtype == torch.long


def test_cifar_pixels_and_labels_roundtrip(tmp_path):
    """The first test image comes back with the bytes that were written (before normalization)."""
    import pickle

    WRITERS["cifar10"](tmp_path)
    bundle = build("cifar10", tmp_path, "dataset.augment=false")
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)
    x, y = bundle.test[0]
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
    std = torch.tensor([0.2470, 0.2435, 0.2616])[:, None, None]
    pixels = ((x * std + mean) * 255).round().to(torch.uint8)
    assert torch.equal(pixels.flatten(), torch.as_tensor(raw["data"][0]))
    assert int(y) == raw["labels"][0]


def test_svhn_label_10_means_zero(tmp_path):
    WRITERS["svhn"](tmp_path)
    bundle = build("svhn", tmp_path)
    labels = {int(bundle.test[i][1]) for i in range(len(bundle.test))}
    assert labels <= set(range(10))


def test_md5_verification_on_by_default(tmp_path):
    WRITERS["cifar10"](tmp_path)
    cfg = compose(["dataset=cifar10", f"dataset.root={tmp_path}"])
    with pytest.raises(Exception, match="cifar-10-batches-py"):
        instantiate(cfg.dataset)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_missing_files_one_line_error(name, tmp_path):
    cfg = compose([f"dataset={name}", f"dataset.root={tmp_path / 'nowhere'}"])
    with pytest.raises(Exception) as info:
        instantiate(cfg.dataset)
    err = info.value.__cause__ if not isinstance(info.value, QuantlabError) else info.value
    assert isinstance(err, QuantlabError)
    msg = str(err)
    assert "\n" not in msg and "dataset.root" in msg and "QUANTLAB_DATA" in msg
    assert "expected" in msg


def test_no_root_names_both_ways(monkeypatch):
    monkeypatch.delenv("QUANTLAB_DATA", raising=False)
    with pytest.raises(Exception) as info:
        instantiate(compose(["dataset=cifar10"]).dataset)
    assert "QUANTLAB_DATA" in str(info.value.__cause__) and "dataset.download=true" in str(
        info.value.__cause__
    )


def test_root_from_environment(tmp_path, monkeypatch):
    WRITERS["mnist"](tmp_path)
    monkeypatch.setenv("QUANTLAB_DATA", str(tmp_path))
    bundle = instantiate(compose(["dataset=mnist", "dataset.val_size=10"]).dataset)
    assert len(bundle.train) == 50


def test_validation_split_is_fixed_and_disjoint():
    a_train, a_val = split_indices(100, 10, seed=0)
    b_train, b_val = split_indices(100, 10, seed=0)
    assert torch.equal(a_val, b_val) and torch.equal(a_train, b_train)
    assert len(set(a_train.tolist()) & set(a_val.tolist())) == 0
    assert len(a_train) + len(a_val) == 100
    assert split_indices(100, 0.1, seed=0)[1].tolist() == a_val.tolist()
    assert not torch.equal(split_indices(100, 10, seed=1)[1], a_val)


def test_validation_split_last_is_the_last_training_images():
    train, val = split_indices(100, 10, seed=3, how="last")
    assert val.tolist() == list(range(90, 100)) and train.tolist() == list(range(90))
    assert split_indices(100, 0, seed=3, how="last")[1].numel() == 0
    with pytest.raises(ConfigError, match="dataset.val_split='first': must be random or last"):
        split_indices(100, 10, seed=0, how="first")


def _cifar_rows(root: Path, batch: str):
    import pickle

    with open(root / "cifar-10-batches-py" / batch, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _pixels(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
    std = torch.tensor([0.2470, 0.2435, 0.2616])[:, None, None]
    return ((x * std + mean) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("loader", ["torchvision", "auto"])
def test_md_bnn_validation_is_the_last_images_augmented(loader, tmp_path):
    """md-bnn's CIFAR validation: `indices[45000:]` of the training set (the last rows of
    data_batch_5), read through the training transform (random crop + flip)."""
    WRITERS["cifar10"](tmp_path)
    last = ["dataset.val_split=last", f"dataset.loader={loader}"]
    plain = build("cifar10", tmp_path, *last)
    raw = _cifar_rows(tmp_path, "data_batch_5")
    for i in range(6):  # the last 6 of the 100 training images, in order, unaugmented
        x, y = plain.val[i]
        assert torch.equal(_pixels(x).flatten(), torch.as_tensor(raw["data"][14 + i]))
        assert int(y) == raw["labels"][14 + i]
    assert len(plain.train) == 94
    augmented = build("cifar10", tmp_path, *last, "dataset.val_augment=true")
    val = make_loader(augmented.val, 6, train=False)
    first, again, other = (next(val.iterate(e))[0] for e in (0, 0, 1))
    if loader == "auto":  # resident: the draws are a function of (seed, epoch, batch)
        assert torch.equal(first, again) and not torch.equal(first, other)
        assert augmented.val.augment == augmented.train.augment is not None
    else:  # torchvision: the training transform itself
        assert augmented.val.transform is augmented.train.transform
    unaugmented = next(iter(make_loader(plain.val, 6, train=False)))[0]
    assert not torch.equal(first, unaugmented)
    torch.manual_seed(0)
    assert torch.equal(unaugmented, next(iter(make_loader(plain.val, 6, train=False)))[0])


def test_bad_val_split_is_refused_before_anything_runs():
    from quantlab.runs.config import validate_train_config

    with pytest.raises(ConfigError, match="dataset.val_split='first'"):
        validate_train_config(compose(["dataset=cifar10", "dataset.val_split=first"]))


def test_digits_val_split_last():
    random, last = (instantiate(compose([f"dataset.val_split={h}"]).dataset) for h in ("random", "last"))
    assert len(last.val) == len(random.val) == 180 and not torch.equal(last.val.x, random.val.x)


def test_digits_embedded_splits():
    bundle = instantiate(compose([]).dataset)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (1257, 180, 360)
    assert bundle.train.x.shape[1:] == (1, 8, 8) and bundle.num_classes == 10
    assert abs(float(bundle.train.x.mean())) < 1e-5  # standardized with training statistics


def test_synthetic_any_shape():
    cfg = compose(
        ["dataset=synthetic", "dataset.shape=[2,16,16]", "dataset.num_classes=7", "dataset.num_train=64"]
    )
    assert cfg.dataset.in_channels == 2 and cfg.dataset.image_size == 16
    bundle = instantiate(cfg.dataset)
    assert bundle.train.x.shape == (64, 2, 16, 16) and int(bundle.train.y.max()) < 7


def test_resumable_order():
    bundle = instantiate(compose(["dataset=synthetic", "dataset.num_train=100"]).dataset)
    loader = make_loader(bundle.train, 8, train=True, seed=3)
    full = [y for _, y in loader.iterate(epoch=2)]
    tail = [y for _, y in loader.iterate(epoch=2, start_batch=5)]
    assert all(torch.equal(a, b) for a, b in zip(full[5:], tail, strict=True)) and len(tail) == len(full) - 5
    other = [y for _, y in loader.iterate(epoch=3)]
    assert not all(torch.equal(a, b) for a, b in zip(full, other, strict=True))


def test_torch_loader_resumable_order(tmp_path):
    WRITERS["mnist"](tmp_path)
    bundle = build("mnist", tmp_path, "dataset.loader=torchvision")
    loader = make_loader(bundle.train, 8, train=True, seed=1)
    full = [y for _, y in loader.iterate(epoch=1)]
    tail = [y for _, y in loader.iterate(epoch=1, start_batch=2)]
    assert all(torch.equal(a, b) for a, b in zip(full[2:], tail, strict=True)) and len(tail) == len(full) - 2
