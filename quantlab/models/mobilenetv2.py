"""MobileNetV2 (Sandler et al. 2018), CIFAR variant: stride-1 stem and stride 1 in the second stage,
so a 32x32 input ends at 4x4 (the usual adaptation used by the MD paper's Table 2)."""

from __future__ import annotations

from torch import nn

from quantlab.models.layers import check_common, conv_bn_relu, init_weights

# (expansion t, channels c, repeats n, stride s) — the paper's table, second stage at stride 1 for CIFAR.
CIFAR_PLAN = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, bn_affine: bool, bias: bool) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += conv_bn_relu(cin, hidden, bn_affine, bias, kernel=1)
        layers += conv_bn_relu(hidden, hidden, bn_affine, bias, kernel=3, stride=stride, groups=hidden)
        layers += [nn.Conv2d(hidden, cout, 1, bias=bias), nn.BatchNorm2d(cout, affine=bn_affine)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


def mobilenetv2(
    num_classes: int,
    in_channels: int,
    image_size: int,
    width_mult: float,
    bn_affine: bool,
    bias: bool,
) -> nn.Module:
    """MobileNetV2, CIFAR variant; ReLU instead of ReLU6 so activations stay unbounded for PTQ ranges."""
    check_common(num_classes, in_channels, image_size)
    stem = int(32 * width_mult)
    layers: list[nn.Module] = conv_bn_relu(in_channels, stem, bn_affine, bias, kernel=3, stride=1)
    cin = stem
    for t, c, n, s in CIFAR_PLAN:
        cout = int(c * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, bn_affine, bias))
            cin = cout
    last = int(1280 * max(1.0, width_mult))
    layers += conv_bn_relu(cin, last, bn_affine, bias, kernel=1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, num_classes)]
    return init_weights(nn.Sequential(*layers))
