"""Key renaming between torchvision and Detectron2 ResNets (MoCo's detection/convert-pretrain-to-detectron2.py rules)."""
from __future__ import annotations

import re

_TV_STAGE = re.compile(r"^layer([1-4])\.")
_D2_STAGE = re.compile(r"^res([2-5])\.")


def torchvision_to_detectron2(key: str) -> str:
    """MoCo's rules for a backbone key: ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``, ``layerN`` ->
    ``res{N+1}``, ``bnK`` -> ``convK.norm``, ``downsample.0`` -> ``shortcut``, ``downsample.1`` -> ``shortcut.norm``.
    The same rules give Detectron2's BottleneckBlock names (conv1-conv3) and BasicBlock names (conv1, conv2,
    shortcut; ResNet-18/34), for either stem (``transfer.backbone``'s CIFAR stem is ``stem.conv1`` too)."""
    if m := _TV_STAGE.match(key):
        key = f"res{int(m.group(1)) + 1}." + key[m.end():]
    else:
        key = "stem." + key
    key = re.sub(r"(^|\.)bn([1-3])\.", r"\1conv\2.norm.", key)
    return key.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")


def detectron2_to_torchvision(key: str) -> str | None:
    """The inverse of :func:`torchvision_to_detectron2`; also accepts a trained Detectron2 model's names
    (``backbone.bottom_up.*``, and ``roi_heads.res5.*`` of C4 models). None for non-backbone keys."""
    for prefix in ("backbone.bottom_up.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    if key.startswith("roi_heads.res5."):
        key = key[len("roi_heads."):]
    if key.startswith("stem."):
        key = key[len("stem."):]
    elif m := _D2_STAGE.match(key):
        key = f"layer{int(m.group(1)) - 1}." + key[m.end():]
    else:
        return None
    key = re.sub(r"(^|\.)conv([1-3])\.norm\.", r"\1bn\2.", key)
    return key.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
