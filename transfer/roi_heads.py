"""``Res5ROIHeadsExtraNorm``: Detectron2's Res5ROIHeads with one norm layer after res5 (MoCo's
detection recipe). Importing this module registers it in ``ROI_HEADS_REGISTRY``, so configs can name
it in ``MODEL.ROI_HEADS.NAME``."""
from __future__ import annotations

from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5ROIHeads plus ``res5.norm`` (of type MODEL.RESNETS.NORM) on res5's output; the converted
    checkpoint has no such layer, so it is the one part of res5 initialised fresh."""

    def __init__(self, cfg, input_shape):
        super().__init__(cfg, input_shape)
        self.res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, self.res5[-1].out_channels))
