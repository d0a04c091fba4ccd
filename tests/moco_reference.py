"""MoCo's detection/convert-pretrain-to-detectron2.py rename loop, written out as the tests' independent
reference for the torchvision -> Detectron2 key names (the product code is simsiam_eval.checkpoints.renaming)."""
from __future__ import annotations


def moco_detectron2_rename(k: str) -> str:
    """MoCo's converter loop body, verbatim: one torchvision key to its Detectron2 name."""
    if "layer" not in k:
        k = "stem." + k
    for t in [1, 2, 3, 4]:
        k = k.replace("layer{}".format(t), "res{}".format(t + 1))
    for t in [1, 2, 3]:
        k = k.replace("bn{}".format(t), "conv{}.norm".format(t))
    k = k.replace("downsample.0", "shortcut")
    k = k.replace("downsample.1", "shortcut.norm")
    return k
