"""``build_basic_resnet_backbone``: Detectron2's ResNet with BasicBlock stages (ResNet-18/34), any base
width and a selectable stem, for small checkpoints such as the demo's CIFAR-stem ResNet-18.

Config (Detectron2's cfg; ``add_stem_config`` adds the one new key):

- ``MODEL.RESNETS.STEM_TYPE``: ``imagenet`` (Detectron2's BasicStem: 7x7/2 conv + 3x3/2 max-pool) or
  ``cifar`` (3x3 stride-1 conv, no max-pool: the CIFAR variant of ``simsiam_eval/models.py``).
- ``MODEL.RESNETS.DEPTH`` 18 or 34; ``STEM_OUT_CHANNELS`` and ``RES2_OUT_CHANNELS`` the base width
  (res3-res5 double it stage by stage), both 64 for torchvision's ResNets.

Module names equal those of Detectron2's own ResNet (``stem.conv1``, ``res2.0.conv1``, ``shortcut``,
``*.norm``), so converted checkpoints load with the usual names. Importing this module registers the
builder in ``BACKBONE_REGISTRY``.
"""
from __future__ import annotations

import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet
from fvcore.nn import weight_init

from simsiam_eval.errors import UserError

STEM_TYPES = ("imagenet", "cifar")
BASIC_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # BasicBlocks in res2..res5


def add_stem_config(cfg) -> None:
    """Our key in Detectron2's cfg; its default keeps every existing recipe as it was."""
    cfg.MODEL.RESNETS.STEM_TYPE = "imagenet"


class CifarStem(CNNBlockBase):
    """The CIFAR ResNet stem: 3x3 stride-1 conv with its norm and a ReLU, no max-pool (stride 1)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "BN"):
        super().__init__(in_channels, out_channels, 1)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False,
                            norm=get_norm(norm, out_channels))
        weight_init.c2_msra_fill(self.conv1)

    def forward(self, x):
        return F.relu_(self.conv1(x))


def basic_blocks_per_stage(cfg) -> tuple[int, ...]:
    """BasicBlocks per stage (res2..res5) of MODEL.RESNETS.DEPTH; a UserError for other depths."""
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth not in BASIC_DEPTHS:
        raise UserError(f"MODEL.RESNETS.DEPTH {depth}: BasicBlock ResNets are 18 or 34 deep "
                        f"(ResNet-50 and deeper: Detectron2's build_resnet_backbone and Res5ROIHeads)")
    return BASIC_DEPTHS[depth]


def basic_stage(cfg, stage: int) -> list[CNNBlockBase]:
    """Stage ``stage`` (2..5) of BasicBlocks: stride 2 in its first block (1 in res2), width doubling."""
    blocks = basic_blocks_per_stage(cfg)[stage - 2]
    res2 = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    in_channels = cfg.MODEL.RESNETS.STEM_OUT_CHANNELS if stage == 2 else res2 * 2 ** (stage - 3)
    first_stride = 1 if stage == 2 else 2
    return ResNet.make_stage(BasicBlock, blocks, in_channels=in_channels, out_channels=res2 * 2 ** (stage - 2),
                             stride_per_block=[first_stride] + [1] * (blocks - 1), norm=cfg.MODEL.RESNETS.NORM)


def build_stem(cfg, in_channels: int) -> CNNBlockBase:
    """The stem MODEL.RESNETS.STEM_TYPE names."""
    stem_type, width, norm = cfg.MODEL.RESNETS.STEM_TYPE, cfg.MODEL.RESNETS.STEM_OUT_CHANNELS, cfg.MODEL.RESNETS.NORM
    if stem_type == "imagenet":
        return BasicStem(in_channels, width, norm)
    if stem_type == "cifar":
        return CifarStem(in_channels, width, norm)
    raise UserError(f"MODEL.RESNETS.STEM_TYPE '{stem_type}': choose {' or '.join(STEM_TYPES)}")


@BACKBONE_REGISTRY.register()
def build_basic_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's ResNet of BasicBlocks with the configured stem and width (res5 dropped when
    OUT_FEATURES stops earlier, as in C4 models, where res5 is in the box head)."""
    stem = build_stem(cfg, input_shape.channels)
    stages = [basic_stage(cfg, stage) for stage in range(2, 6)]
    return ResNet(stem, stages, out_features=cfg.MODEL.RESNETS.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
