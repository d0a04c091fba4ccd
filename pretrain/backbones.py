"""ResNet encoders: torchvision's ImageNet ResNets and the CIFAR variant of the SimSiam appendix.

Both keep torchvision's parameter names, so every checkpoint converts with the same rules.
"""
from __future__ import annotations

import torch.nn as nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from simsiam_eval.errors import UserError

ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet101": (Bottleneck, [3, 4, 23, 3])}
STEMS = ("imagenet", "cifar")


class CifarResNet(ResNet):
    """torchvision ResNet with a 3x3 stride-1 stem, no max-pool, and base width ``width`` (64 = standard);
    ``padding`` of conv1 is 1 (2 in solo-learn's CIFAR ResNets, whose feature maps are 2 px larger)."""

    def __init__(self, block, layers, num_classes: int = 1000, zero_init_residual: bool = False,
                 width: int = 64, padding: int = 1) -> None:
        super().__init__(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual)
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=padding, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        _init_like_torchvision(self, zero_init_residual)


def _init_like_torchvision(model: ResNet, zero_init_residual: bool) -> None:
    """The weight initialisation of torchvision's ResNet.__init__, for the rebuilt layers."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, Bottleneck):
                nn.init.constant_(module.bn3.weight, 0)
            elif isinstance(module, BasicBlock):
                nn.init.constant_(module.bn2.weight, 0)


def build_resnet(arch: str, stem: str = "imagenet", width: int = 64, num_classes: int = 1000,
                 zero_init_residual: bool = False) -> ResNet:
    """A torchvision ResNet (``stem='imagenet'``) or its CIFAR variant (``stem='cifar'``)."""
    if arch not in ARCHS:
        raise UserError(f"unknown arch '{arch}' (choose from {', '.join(ARCHS)})")
    if stem == "imagenet":
        if width != 64:
            raise UserError("model.width applies to the CIFAR stem only; torchvision ResNets are 64 wide")
        return models.__dict__[arch](num_classes=num_classes, zero_init_residual=zero_init_residual)
    if stem == "cifar":
        block, layers = ARCHS[arch]
        return CifarResNet(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual,
                           width=width)
    raise UserError(f"unknown stem '{stem}' (choose from {', '.join(STEMS)})")


class Pool5(nn.Module):
    """View of a ResNet that stops at global average pooling (skips ``fc``, e.g. the projector)."""

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.resnet = resnet

    def forward(self, x):
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        return r.avgpool(x).flatten(1)
