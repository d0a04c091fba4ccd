"""The Detectron2 check of a conversion: the written .pkl loaded by Detectron2's own checkpointer into its
ResNet gives torchvision's res4/res5 outputs. Callers of ``convert_checkpoint`` pass ``LIBRARY_CHECKS``;
Detectron2 is imported only when the check runs (without it, the torchvision check runs instead)."""
from __future__ import annotations

import warnings

import torch

from simsiam_eval.checkpoints.canonical import CanonicalCheckpoint
from simsiam_eval.checkpoints.renaming import detectron2_to_torchvision
from simsiam_eval.checkpoints.verify import Check, NumericalCheck, compare_outputs
from simsiam_eval.models import RESNET_LAYOUTS


def detectron2_resnet_config(arch: str, out_features=("res4",), stem: str = "imagenet", width: int = 64):
    """A Detectron2 config whose ResNet matches torchvision's ``arch`` (STRIDE_IN_1X1 False, BN, nothing frozen);
    the CIFAR stem (BasicBlock ResNets of any width) is ``transfer.backbone``'s."""
    from detectron2.config import get_cfg

    block, blocks, groups, width_per_group = RESNET_LAYOUTS[arch]
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = sum(blocks) * (3 if block == "bottleneck" else 2) + 2
    cfg.MODEL.RESNETS.NUM_GROUPS = groups
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = width_per_group
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256 if block == "bottleneck" else 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out_features)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.DEVICE = "cpu"
    if stem != "imagenet":  # importing transfer.backbone registers build_basic_resnet_backbone
        from transfer.backbone import add_stem_config

        add_stem_config(cfg)
        cfg.MODEL.BACKBONE.NAME = "build_basic_resnet_backbone"
        cfg.MODEL.RESNETS.STEM_TYPE = stem
        cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = width
    return cfg


def detectron2_check(again: CanonicalCheckpoint, output, x, reference) -> Check:
    """The .pkl loaded by DetectionCheckpointer into Detectron2's ResNet: every tensor matched, res4/res5 equal."""
    name = "detectron2 res4/res5 outputs"
    try:
        with warnings.catch_warnings():  # detectron2's import warns about torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            from detectron2.checkpoint import DetectionCheckpointer
            from detectron2.layers import ShapeSpec
            from detectron2.modeling import build_backbone
    except ImportError:
        return Check(name, None, "detectron2 not installed")
    cfg = detectron2_resnet_config(again.arch, ("res4", "res5"), again.stem, again.width)
    with torch.device("meta"):  # no random init: every tensor is loaded from the file (checked below)
        backbone = build_backbone(cfg, ShapeSpec(channels=3))
    backbone.to_empty(device="cpu")
    DetectionCheckpointer(backbone).load(str(output))
    unmatched = [k for k, v in backbone.state_dict().items()
                 if not torch.equal(v, again.state_dict[detectron2_to_torchvision(k)].to(v.dtype))]
    if unmatched:
        return Check(name, False, f"{len(unmatched)} Detectron2 tensors not loaded from the file ({', '.join(unmatched[:4])})")
    with torch.no_grad():
        got = backbone.eval()(x)
    checks = [compare_outputs(name, got[stage], reference[stage]) for stage in ("res4", "res5")]
    worst = next((c for c in checks if not c.passed), checks[0])
    return Check(name, worst.passed, f"{len(backbone.state_dict())} tensors matched; " + worst.detail)


LIBRARY_CHECKS: dict[str, NumericalCheck] = {"detectron2": detectron2_check}
