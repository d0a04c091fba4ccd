"""The torchvision -> Detectron2 key names of MoCo's detection converter, restated from its documented
rules (not its code) as the tests' independent reference; the product code is
simsiam_eval.checkpoints.renaming.

Rules (MoCo's detection/README and convert-pretrain-to-detectron2.py behaviour): keys outside the
four stages go under ``stem.``; ``layerN`` becomes ``res{N+1}``; ``bnK`` becomes ``convK.norm``;
``downsample.0`` becomes ``shortcut`` and ``downsample.1`` ``shortcut.norm``.
"""
from __future__ import annotations

_SHORTCUT = {"0": ["shortcut"], "1": ["shortcut", "norm"]}


def moco_detectron2_rename(key: str) -> str:
    """One torchvision key to the Detectron2 name MoCo's converter gives it."""
    parts = key.split(".")
    if not any(part.startswith("layer") for part in parts):
        parts.insert(0, "stem")
    renamed: list[str] = []
    index = 0
    while index < len(parts):
        part = parts[index]
        if part.startswith("layer") and part[5:].isdigit():
            renamed.append(f"res{int(part[5:]) + 1}")
        elif part.startswith("bn") and part[2:].isdigit():
            renamed += [f"conv{part[2:]}", "norm"]
        elif part == "downsample" and index + 1 < len(parts) and parts[index + 1] in _SHORTCUT:
            index += 1
            renamed += _SHORTCUT[parts[index]]
        else:
            renamed.append(part)
        index += 1
    return ".".join(renamed)
