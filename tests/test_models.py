"""Each model does forward and backward at its dataset's shape on synthetic data."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from quantlab.runs.config import compose

# model -> the datasets it is used with (shape from the dataset config).
CASES = [
    ("mlp", "digits", []),
    ("mlp", "mnist", []),
    ("lenet5", "mnist", []),
    ("lenet5", "digits", []),
    ("small_cnn", "digits", []),
    ("vgg_small", "cifar10", []),
    ("vgg11", "cifar10", []),
    ("vgg16", "cifar100", []),
    ("resnet18", "cifar10", []),
    ("resnet18", "tinyimagenet", ["model.stem_stride=2"]),
    ("resnet18", "imagenet", []),
    ("mobilenetv2", "cifar10", []),
    ("alexnet_bn", "cifar10", []),
    ("alexnet_bn", "imagenet", []),
]


@pytest.mark.parametrize(("model", "dataset", "extra"), CASES, ids=[f"{m}-{d}" for m, d, _ in CASES])
def test_forward_backward(model, dataset, extra):
    cfg = compose([f"model={model}", f"dataset={dataset}", *extra])
    net = instantiate(cfg.model)
    d = cfg.dataset
    x = torch.randn(2, d.in_channels, d.image_size, d.image_size)
    y = torch.randint(0, d.num_classes, (2,))
    out = net(x)
    assert out.shape == (2, d.num_classes)
    torch.nn.functional.cross_entropy(out, y).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bn_affine_and_bias_options():
    net = instantiate(
        compose(["model=vgg16", "dataset=cifar10", "model.bn_affine=false", "model.bias=false"]).model
    )
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not bn.affine for bn in bns)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None for c in convs)


def test_resnet18_layouts():
    cifar = instantiate(compose(["model=resnet18", "dataset=cifar10"]).model)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    tiny = instantiate(compose(["model=resnet18", "dataset=tinyimagenet", "model.stem_stride=2"]).model)
    assert tiny.conv1.stride == (2, 2)
    imnet = instantiate(compose(["model=resnet18", "dataset=imagenet"]).model)
    assert imnet.conv1.kernel_size == (7, 7) and isinstance(imnet.maxpool, torch.nn.MaxPool2d)
    # Same parameter names and shapes as torchvision's resnet18 (pretrained weights load).
    import torchvision

    reference = torchvision.models.resnet18(num_classes=1000).state_dict()
    ours = imnet.state_dict()
    assert set(ours) == set(reference)
    assert all(ours[k].shape == reference[k].shape for k in ours)


def test_vgg16_cifar_classifier():
    net = instantiate(compose(["model=vgg16", "dataset=cifar10"]).model)
    linears = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 512), (512, 10)]
    assert not any(isinstance(m, torch.nn.Dropout) for m in net.modules())
