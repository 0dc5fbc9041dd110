"""The embedded glyphs dataset: deterministic, balanced, cached, CIFAR-shaped, learnable."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from quantlab.data import glyphs as G
from quantlab.data import make_loader
from quantlab.data.resident import ResidentImages
from quantlab.errors import ConfigError
from quantlab.runs.config import compose


@pytest.fixture(scope="module")
def bank():
    return G.render_bank()


def test_the_glyph_bank_has_ten_distinct_digits_per_font(bank):
    assert bank.shape == (len(G.FONTS) * len(G.STROKES), 10, G.CANVAS, G.CANVAS)
    assert float(bank.min()) >= 0 and float(bank.max()) <= 1
    for style in bank:
        ink = style.flatten(1)
        assert (ink.sum(1) > 20).all()  # every digit drawn
        assert torch.cdist(ink, ink).add(torch.eye(10) * 1e9).min() > 1  # no two digits alike


def test_the_same_seed_gives_the_same_images_and_another_seed_others(bank):
    a_images, a_labels = G.generate(3, 200, bank, stream=0)
    b_images, b_labels = G.generate(3, 200, bank, stream=0)
    assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    c_images, _ = G.generate(4, 200, bank, stream=0)
    test_images, _ = G.generate(3, 200, bank, stream=1)
    assert not torch.equal(a_images, c_images) and not torch.equal(a_images, test_images)
    assert (a_images.float() - c_images.float()).abs().mean() > 20  # different pictures, not a shift
    assert a_images.shape == (200, 3, 32, 32) and a_images.dtype == torch.uint8


def test_classes_are_balanced(bank):
    _, labels = G.generate(0, 1000, bank, stream=0)
    assert torch.bincount(labels, minlength=10).tolist() == [100] * 10
    assert labels[:10].tolist() != list(range(10))  # shuffled
    with pytest.raises(ValueError, match="multiple of 10"):
        G.balanced_labels(15, torch.Generator())


def test_the_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    first = G.load_or_generate(tmp_path, 1, 100, 50)
    files = list((tmp_path / "glyphs").glob("*.pt"))
    assert len(files) == 1 and "seed1" in files[0].name

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again instead of loading the cache")

    monkeypatch.setattr(G, "generate", no_generation)
    second = G.load_or_generate(tmp_path, 1, 100, 50)
    for key in first:
        assert torch.equal(first[key], second[key])
    monkeypatch.undo()
    G.load_or_generate(tmp_path, 2, 100, 50)  # another seed: another file
    assert len(list((tmp_path / "glyphs").glob("*.pt"))) == 2
    more = G.load_or_generate(tmp_path, 1, 200, 50)  # more training images: the same test set
    assert torch.equal(more["test_images"], first["test_images"])
    files[0].write_bytes(b"truncated")  # a broken cache is made again, not an error
    again = G.load_or_generate(tmp_path, 1, 100, 50)
    assert torch.equal(again["train_images"], first["train_images"])


def test_an_unwritable_root_keeps_the_images_in_memory(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    data = G.load_or_generate(blocked, 0, 20, 20)
    assert data["train_images"].shape == (20, 3, 32, 32)
    assert "kept in memory only" in caplog.text


@pytest.mark.parametrize("loader", ["auto", "torchvision"])
def test_glyphs_is_a_dataset_option_with_both_loaders(tmp_path, loader):
    cfg = compose(
        [
            "dataset=glyphs",
            f"dataset.root={tmp_path}",
            "dataset.num_train=300",
            "dataset.num_test=100",
            "dataset.val_size=50",
            f"dataset.loader={loader}",
        ]
    )
    bundle = instantiate(cfg.dataset)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (250, 50, 100)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 32)
    assert isinstance(bundle.train, ResidentImages) == (loader == "auto")
    x, y = next(iter(make_loader(bundle.train, 64, train=True, seed=0)))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    test_x, _ = next(iter(make_loader(bundle.test, 100, train=False)))
    assert abs(float(test_x.mean())) < 0.3  # normalized with the training images' statistics
    if loader == "auto":  # the training augmentation: per-sample crops, drawn per epoch
        train = make_loader(bundle.train, 64, train=True, seed=0)
        assert not torch.equal(next(train.iterate(0))[0], next(train.iterate(1))[0])


def test_bad_sizes_are_one_line_errors(tmp_path):
    for key, value, expected in (
        ("num_train", 105, "multiple of 10"),
        ("num_classes", 100, "glyphs has 10"),
    ):
        cfg = compose(["dataset=glyphs", f"dataset.root={tmp_path}", f"dataset.{key}={value}"])
        with pytest.raises(Exception) as info:
            instantiate(cfg.dataset)
        err = info.value.__cause__ or info.value
        assert isinstance(err, ConfigError) and expected in str(err) and "\n" not in str(err)


def test_a_float_network_learns_glyphs_well_above_chance(tmp_path):
    """LeNet-5 on 4,000 training images for 4 epochs: far above the 10 % of chance."""
    from tests.conftest import make_trainer

    overrides = [
        "experiment=glyphs_md",
        "method=float",
        f"dataset.root={tmp_path}",
        "dataset.num_train=4500",
        "dataset.num_test=1000",
        "dataset.val_size=500",
        "schedule.epochs=4",
        "trainer.histogram_every=0",
    ]
    trainer = make_trainer(overrides, tmp_path / "run")
    trainer.fit()
    accuracy = trainer.test().metrics["test/acc"]
    assert accuracy > 40, accuracy
