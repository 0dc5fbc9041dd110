"""Model builders. Each takes num_classes, in_channels, image_size (from the dataset) and the
options bn_affine (batch norm with or without learnable parameters) and bias."""

from quantlab.models.alexnet import alexnet_bn
from quantlab.models.mobilenetv2 import mobilenetv2
from quantlab.models.resnet import resnet18
from quantlab.models.small import lenet5, mlp, small_cnn
from quantlab.models.vgg import vgg11, vgg16, vgg_small

__all__ = [
    "alexnet_bn",
    "lenet5",
    "mlp",
    "mobilenetv2",
    "resnet18",
    "small_cnn",
    "vgg11",
    "vgg16",
    "vgg_small",
]
