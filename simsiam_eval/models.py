"""ResNet encoders: torchvision's ImageNet ResNets and the CIFAR variant of the SimSiam appendix, and their
pool5 features.

Both keep torchvision's parameter names, so every checkpoint converts with the same rules. Pretraining
builds its encoder with :func:`build_resnet` (checked config values), the checkpoint loader the module of
any supported layout with :func:`resnet`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from simsiam_eval.errors import UserError

# torchvision ResNets: name -> (block, blocks per stage, groups, width per group)
RESNET_LAYOUTS = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": ("bottleneck", (3, 4, 23, 3), 1, 128),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": ("bottleneck", (3, 4, 23, 3), 64, 4),
}
BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
PRETRAIN_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
STEMS = ("imagenet", "cifar")
# conv1 padding of the 3x3 stride-1 stems: ours (and most CIFAR ResNets), and solo-learn's (solo/methods/base.py)
CIFAR_STEM_PADDING = {"cifar": 1, "cifar-pad2": 2}


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


def resnet(arch: str, stem: str = "imagenet", width: int = 64, num_classes: int = 1000,
           zero_init_residual: bool = False) -> ResNet:
    """The module of ``arch`` (a key of RESNET_LAYOUTS) with the ImageNet stem or a CIFAR stem (a key of
    CIFAR_STEM_PADDING; ``width`` applies to these only). The arguments are not checked: see build_resnet."""
    if stem == "imagenet":
        return models.__dict__[arch](num_classes=num_classes, zero_init_residual=zero_init_residual)
    block, blocks, _, _ = RESNET_LAYOUTS[arch]
    return CifarResNet(BLOCKS[block], list(blocks), num_classes=num_classes, zero_init_residual=zero_init_residual,
                       width=width, padding=CIFAR_STEM_PADDING[stem])


def build_resnet(arch: str, stem: str = "imagenet", width: int = 64, num_classes: int = 1000,
                 zero_init_residual: bool = False) -> ResNet:
    """A torchvision ResNet (``stem='imagenet'``) or its CIFAR variant (``stem='cifar'``) for pretraining;
    a UserError for an arch, stem or width it does not offer."""
    if arch not in PRETRAIN_ARCHS:
        raise UserError(f"unknown arch '{arch}' (choose from {', '.join(PRETRAIN_ARCHS)})")
    if stem not in STEMS:
        raise UserError(f"unknown stem '{stem}' (choose from {', '.join(STEMS)})")
    if stem == "imagenet" and width != 64:
        raise UserError("model.width applies to the CIFAR stem only; torchvision ResNets are 64 wide")
    return resnet(arch, stem, width, num_classes, zero_init_residual)


def pool5(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled features of the last ResNet stage, whatever ``model.fc`` holds.

    For a torchvision ResNet (also the CIFAR variant and the SimSiam encoder, whose ``fc`` is the
    projector) this runs the network up to ``avgpool``; any other module is called as is.
    """
    if isinstance(model, ResNet):
        x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
        x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return torch.flatten(model.avgpool(x), 1)
    return model(images)


class Pool5(nn.Module):
    """View of a ResNet that stops at global average pooling (skips ``fc``, e.g. the projector)."""

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.resnet = resnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool5(self.resnet, x)
