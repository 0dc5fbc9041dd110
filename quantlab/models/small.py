"""Small models for small images: mlp, lenet5, small_cnn (the digits default)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from quantlab.models.layers import check_common, conv_bn_relu, init_weights


def mlp(
    num_classes: int,
    in_channels: int,
    image_size: int,
    hidden: Sequence[int],
    bn_affine: bool,
    bias: bool,
    batch_norm: bool,
) -> nn.Module:
    """Flatten → [Linear → BatchNorm1d (unless `batch_norm=false`) → ReLU] per hidden width → Linear."""
    check_common(num_classes, in_channels, image_size)
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size * image_size
    for h in hidden:
        norm = [nn.BatchNorm1d(h, affine=bn_affine)] if batch_norm else []
        layers += [nn.Linear(width, h, bias=bias), *norm, nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, num_classes, bias=bias))
    return init_weights(nn.Sequential(*layers))


def lenet5(num_classes: int, in_channels: int, image_size: int, bn_affine: bool, bias: bool) -> nn.Module:
    """LeNet-5 with batch norm: conv5x5(6) → pool → conv5x5(16) → pool → FC 120 → FC 84 → FC.

    Convs are padded ('same') and the last pool is adaptive to 5x5, so any image size from 8 up works;
    at 28x28 the feature map sizes are those of the original.
    """
    check_common(num_classes, in_channels, image_size)
    pad2 = 0 if image_size >= 28 else 2
    return init_weights(
        nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2, bias=bias),
            nn.BatchNorm2d(6, affine=bn_affine),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2, bias=bias),
            nn.BatchNorm2d(16, affine=bn_affine),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(5),
            nn.Flatten(),
            nn.Linear(16 * 25, 120, bias=bias),
            nn.BatchNorm1d(120, affine=bn_affine),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84, bias=bias),
            nn.BatchNorm1d(84, affine=bn_affine),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes, bias=bias),
        )
    )


def small_cnn(
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: int,
    bn_affine: bool,
    bias: bool,
) -> nn.Module:
    """The digits default: conv(w) → conv(2w) → max-pool → conv(4w) → global average pool → FC."""
    check_common(num_classes, in_channels, image_size)
    return init_weights(
        nn.Sequential(
            *conv_bn_relu(in_channels, width, bn_affine, bias),
            *conv_bn_relu(width, 2 * width, bn_affine, bias),
            nn.MaxPool2d(2) if image_size >= 4 else nn.Identity(),
            *conv_bn_relu(2 * width, 4 * width, bn_affine, bias),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, num_classes, bias=bias),
        )
    )
