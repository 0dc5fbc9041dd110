"""ResNet-18 (He et al. 2016) with the torchvision module layout (conv1, bn1, layer1..4, fc).

Stems: `cifar` — 3x3 conv, stride `stem_stride` (1 for CIFAR, 2 for TinyImageNet as in the MD
paper), no max-pool; `imagenet` — 7x7 stride-2 conv + 3x3 max-pool, the torchvision layout;
`auto` picks `imagenet` for images of 128 pixels and more.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from quantlab.models.layers import check_common, init_weights


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, bn_affine: bool, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(cout, affine=bn_affine)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(cout, affine=bn_affine)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=bias), nn.BatchNorm2d(cout, affine=bn_affine)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
        image_size: int,
        stem: Literal["auto", "cifar", "imagenet"],
        stem_stride: int,
        bn_affine: bool,
        bias: bool,
    ) -> None:
        super().__init__()
        check_common(num_classes, in_channels, image_size)
        if stem == "auto":
            stem = "imagenet" if image_size >= 128 else "cifar"
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=bias)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stem_stride, 1, bias=bias)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"model.stem={stem!r}: must be auto, cifar or imagenet")
        self.bn1 = nn.BatchNorm2d(64, affine=bn_affine)
        self.relu = nn.ReLU(inplace=True)
        cin, stages = 64, []
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(cin, width, stride, bn_affine, bias))
                cin = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(
    num_classes: int,
    in_channels: int,
    image_size: int,
    stem: Literal["auto", "cifar", "imagenet"],
    stem_stride: int,
    bn_affine: bool,
    bias: bool,
) -> nn.Module:
    """ResNet-18: BasicBlocks [2, 2, 2, 2]; `bias` adds biases to the convs (the fc always has one)."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels, image_size, stem, stem_stride, bn_affine, bias)
