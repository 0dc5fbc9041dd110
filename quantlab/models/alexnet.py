"""AlexNet with batch norm, the layout used for binary networks (Darabi et al. 2018; Foothill Sec. 4).

Pooling comes before batch norm and the non-linearity, so that a binary activation placed after
the non-linearity is never pooled. Images of 64 pixels and more use the ImageNet stem (11x11,
stride 4); smaller ones (CIFAR) a 3x3 stride-1 stem, with the same channel widths.
"""

from __future__ import annotations

from torch import nn

from quantlab.models.layers import check_common, init_weights


def _block(
    cin: int, cout: int, kernel: int, stride: int, pool: bool, bn_affine: bool, bias: bool
) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=bias)]
    if pool:
        layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
    return layers + [nn.BatchNorm2d(cout, affine=bn_affine), nn.ReLU(inplace=True)]


def alexnet_bn(
    num_classes: int,
    in_channels: int,
    image_size: int,
    hidden: int,
    bn_affine: bool,
    bias: bool,
) -> nn.Module:
    """conv64-conv192-conv384-conv256-conv256 (pools after 1, 2, 5) → FC hidden → FC hidden → FC."""
    check_common(num_classes, in_channels, image_size)
    large = image_size >= 64
    k1, s1 = (11, 4) if large else (3, 1)
    features = [
        *_block(in_channels, 64, k1, s1, True, bn_affine, bias),
        *_block(64, 192, 5, 1, True, bn_affine, bias),
        *_block(192, 384, 3, 1, False, bn_affine, bias),
        *_block(384, 256, 3, 1, False, bn_affine, bias),
        *_block(256, 256, 3, 1, True, bn_affine, bias),
    ]
    side = 6 if large else 2
    classifier = [
        nn.AdaptiveAvgPool2d(side),
        nn.Flatten(),
        nn.Linear(256 * side * side, hidden, bias=bias),
        nn.BatchNorm1d(hidden, affine=bn_affine),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden, bias=bias),
        nn.BatchNorm1d(hidden, affine=bn_affine),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes, bias=bias),
    ]
    return init_weights(nn.Sequential(*features, *classifier))
