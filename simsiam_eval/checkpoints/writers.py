"""Writers: the canonical backbone as Detectron2 ``.pkl``, torchvision ``.pth``, timm-compatible weights or safetensors."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from simsiam_eval.atomic import atomic_path
from simsiam_eval.checkpoints.canonical import CanonicalCheckpoint
from simsiam_eval.checkpoints.renaming import torchvision_to_detectron2
from simsiam_eval.errors import UserError
from simsiam_eval.models import RESNET_LAYOUTS

TARGETS = ("detectron2", "torchvision", "timm", "safetensors")
AUTHOR = "simsiam-eval"
# The reader that reads each target back for verification.
TARGET_READERS = {"detectron2": "detectron2", "torchvision": "torchvision", "timm": "torchvision",
                  "safetensors": "torchvision"}


def target_from_suffix(path: str | os.PathLike) -> str | None:
    """``.pkl`` -> detectron2, ``.safetensors`` -> safetensors, ``.pth``/``.pt``/``.pth.tar`` -> torchvision
    (timm reads the same layout; ask for it with ``--to timm``); None when the suffix says nothing."""
    name = Path(path).name.lower()
    if name.endswith(".pkl"):
        return "detectron2"
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith((".pth", ".pt", ".pth.tar", ".bin")):
        return "torchvision"
    return None


def detectron2_model(ckpt: CanonicalCheckpoint) -> dict:
    """The ``model`` dict of a Detectron2 weights file: MoCo's names, numpy arrays, BN statistics kept."""
    return {torchvision_to_detectron2(k): v.detach().cpu().numpy() for k, v in ckpt.state_dict.items()}


def detectron2_metadata(ckpt: CanonicalCheckpoint) -> dict:
    """What a Detectron2 config needs beyond the tensors: arch, stem type and width (``transfer.backbone``)."""
    return {"arch": ckpt.arch, "stem": ckpt.stem, "width": ckpt.width}


class PortablePickler(pickle.Pickler):
    """Pickles numpy arrays as ``numpy.ndarray(shape, dtype, bytearray)``: loadable by numpy 1.x and 2.x
    alike (numpy 2's default reduction names ``numpy._core``, which numpy 1.x lacks), and writable once
    loaded (``torch.from_numpy`` warns on read-only arrays)."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            return np.ndarray, (obj.shape, obj.dtype.str, bytearray(np.ascontiguousarray(obj).tobytes()))
        return NotImplemented


def write_detectron2(ckpt: CanonicalCheckpoint, path: str | os.PathLike) -> list[str]:
    """A pickle ``{'model': {name: ndarray}, '__author__', 'matching_heuristics': True, 'arch', 'stem', 'width'}``
    (pickle, not torch.save). The CIFAR stem is for BasicBlock ResNets (Detectron2 side: ``transfer.backbone``)."""
    if ckpt.stem != "imagenet" and RESNET_LAYOUTS[ckpt.arch][0] != "basic":
        raise UserError(f"{ckpt.path}: a {ckpt.arch} with the CIFAR 3x3 stem has no Detectron2 backbone "
                        f"(the CIFAR stem converts for resnet18/34 only)")
    model = detectron2_model(ckpt)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        PortablePickler(f, protocol=4).dump({"model": model, "__author__": AUTHOR, "matching_heuristics": True,
                                             **detectron2_metadata(ckpt)})
    return list(model)


def write_torchvision(ckpt: CanonicalCheckpoint, path: str | os.PathLike) -> list[str]:
    """A bare state dict in torchvision names, without ``fc``: ``model.load_state_dict(sd, strict=False)``
    reports exactly fc.weight and fc.bias missing."""
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt.state_dict.items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return list(state)


def write_timm(ckpt: CanonicalCheckpoint, path: str | os.PathLike) -> list[str]:
    """timm's ResNets use torchvision's names: a bare state dict (``.safetensors`` suffix: safetensors) for
    ``timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=path))``."""
    if ckpt.stem != "imagenet":
        raise UserError(f"{ckpt.path}: timm's ResNets have no CIFAR stem; convert to torchvision or safetensors")
    if str(path).lower().endswith(".safetensors"):
        return write_safetensors(ckpt, path)
    return write_torchvision(ckpt, path)


def write_safetensors(ckpt: CanonicalCheckpoint, path: str | os.PathLike) -> list[str]:
    """torchvision names in a safetensors file; arch, stem, width and source format in its metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in ckpt.state_dict.items()}
    metadata = {"format": "pt", "arch": ckpt.arch, "stem": ckpt.stem, "width": str(ckpt.width),
                "source_format": ckpt.source_format, "source_sha256": ckpt.sha256 or "", "written_by": AUTHOR}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return list(state)


WRITERS = {"detectron2": write_detectron2, "torchvision": write_torchvision, "timm": write_timm,
           "safetensors": write_safetensors}


def write_checkpoint(ckpt: CanonicalCheckpoint, path: str | os.PathLike, target: str) -> list[str]:
    """Write ``ckpt`` in ``target``'s format; returns the keys written."""
    if target not in WRITERS:
        raise UserError(f"unknown target format '{target}' (choose from {', '.join(TARGETS)})")
    if ckpt.stem == "cifar-pad2":
        raise UserError(f"{ckpt.path}: solo-learn's CIFAR stem (3x3 conv1 with padding 2); no {target} file "
                        f"records that padding, and read back it would build a padding-1 stem with other features; "
                        f"evaluate the checkpoint itself (knn and linear read it)")
    return WRITERS[target](ckpt, path)
