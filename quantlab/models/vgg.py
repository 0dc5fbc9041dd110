"""VGG family for small images: vgg_small (the gradient-L1 paper's VGG-like net), vgg11, vgg16.

CIFAR variants: 3x3 convs with batch norm, max-pools that stop once the map is 1x1 (so small inputs
work), and for vgg11/vgg16 a 512-512 classifier without dropout (MD paper, App. B.4).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from quantlab.models.layers import check_common, conv_bn_relu, init_weights

M = "M"
CONFIGS: dict[str, list] = {
    # The common "VGG-small"/"VGG-like" CIFAR net: 2x128, 2x256, 2x512 convs, three pools.
    "vgg_small": [128, 128, M, 256, 256, M, 512, 512, M],
    "vgg11": [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "vgg16": [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
}


class VGG(nn.Module):
    def __init__(
        self,
        plan: Sequence,
        num_classes: int,
        in_channels: int,
        image_size: int,
        hidden: Sequence[int],
        bn_affine: bool,
        bias: bool,
    ) -> None:
        super().__init__()
        check_common(num_classes, in_channels, image_size)
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for item in plan:
            if item == M:
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                layers += conv_bn_relu(channels, item, bn_affine, bias)
                channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = [nn.Flatten()]
        width = channels
        for h in hidden:
            head += [
                nn.Linear(width, h, bias=bias),
                nn.BatchNorm1d(h, affine=bn_affine),
                nn.ReLU(inplace=True),
            ]
            width = h
        head.append(nn.Linear(width, num_classes, bias=bias))
        self.classifier = nn.Sequential(*head)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def vgg_small(num_classes: int, in_channels: int, image_size: int, bn_affine: bool, bias: bool):
    """VGG-like (gradient-L1 paper, Sec. 4): 128-128-M-256-256-M-512-512-M, then a linear classifier."""
    return VGG(CONFIGS["vgg_small"], num_classes, in_channels, image_size, (), bn_affine, bias)


def vgg11(num_classes: int, in_channels: int, image_size: int, bn_affine: bool, bias: bool):
    """VGG-11 with batch norm, CIFAR variant (FC 512, no dropout)."""
    return VGG(CONFIGS["vgg11"], num_classes, in_channels, image_size, (512, 512), bn_affine, bias)


def vgg16(num_classes: int, in_channels: int, image_size: int, bn_affine: bool, bias: bool):
    """VGG-16 with batch norm, CIFAR variant (FC 512, no dropout; MD paper App. B.4)."""
    return VGG(CONFIGS["vgg16"], num_classes, in_channels, image_size, (512, 512), bn_affine, bias)
