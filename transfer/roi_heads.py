"""Registered Res5ROIHeads variants (``MODEL.ROI_HEADS.NAME``); importing this module registers them.

- ``Res5ROIHeadsExtraNorm``: Detectron2's Res5ROIHeads with one norm layer after res5 (MoCo's
  detection recipe).
- ``Res5ROIHeadsBasicBlock``: Res5ROIHeads whose res5 is a stage of BasicBlocks (ResNet-18/34, any
  base width; ``transfer.backbone``), and ``Res5ROIHeadsBasicBlockExtraNorm`` with MoCo's extra norm.
"""
from __future__ import annotations

from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from torch import nn

from transfer.backbone import basic_stage


def add_res5_norm(heads: Res5ROIHeads, cfg) -> None:
    """``res5.norm`` (of type MODEL.RESNETS.NORM) on res5's output; the converted checkpoint has no such
    layer, so it is the one part of res5 initialised fresh."""
    heads.res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, heads.res5[-1].out_channels))


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5ROIHeads plus ``res5.norm`` (``add_res5_norm``)."""

    def __init__(self, cfg, input_shape):
        super().__init__(cfg, input_shape)
        add_res5_norm(self, cfg)


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsBasicBlock(Res5ROIHeads):
    """Res5ROIHeads with res5 built of BasicBlocks (2 for depth 18, 3 for 34) of 8x RES2_OUT_CHANNELS."""

    @classmethod
    def _build_res5_block(cls, cfg):
        blocks = basic_stage(cfg, 5)
        return nn.Sequential(*blocks), blocks[-1].out_channels


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsBasicBlockExtraNorm(Res5ROIHeadsBasicBlock):
    """Res5ROIHeadsBasicBlock plus ``res5.norm`` (``add_res5_norm``), as MoCo's recipe has it."""

    def __init__(self, cfg, input_shape):
        super().__init__(cfg, input_shape)
        add_res5_norm(self, cfg)
