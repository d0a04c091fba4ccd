"""One small reader per source format, and a detector that picks the reader from the key layout.

A reader takes the loaded object and returns ``(tensors, rename)``: the source tensors it looks at
(keyed as in the source, nested dicts joined with '.') and a function mapping a source key to its
torchvision backbone name, or to None when the tensor is not part of the backbone (projector,
predictor, momentum encoder, queue, fc...). Keys that rename to ``fc.*`` are dropped as well.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from simsiam_eval.checkpoints.renaming import detectron2_to_torchvision

Rename = Callable[[str], "str | None"]


# ----------------------------------------------------------------------------- helpers
def _tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors (and numpy arrays, as tensors) of a possibly nested dict, keyed by dotted paths."""
    found: dict[str, torch.Tensor] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, torch.Tensor):
                found[name] = value
            elif isinstance(value, np.ndarray):
                found[name] = torch.as_tensor(value)
            elif isinstance(value, Mapping):
                found.update(_tensors(value, name + "."))
    return found


def _inner(obj: Any, *keys: str) -> Any:
    """``obj[keys[0]]`` for the first key present that holds a dict, else ``obj`` itself."""
    if isinstance(obj, Mapping):
        for key in keys:
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    return obj


def _strip(*prefixes: str) -> Rename:
    """Rename by removing the first matching prefix; keys with none of them are not backbone keys."""
    def rename(key: str) -> str | None:
        for prefix in prefixes:
            if key.startswith(prefix):
                return key[len(prefix):]
        return None
    return rename


def _has_prefix(obj: Any, *prefixes: str) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(k, str) and k.startswith(prefixes) for k in obj)


def _state_dict(obj: Any) -> Any:
    """The model state dict of a training checkpoint ('state_dict' or 'model'), or the object itself."""
    return _inner(obj, "state_dict", "model")


# ----------------------------------------------------------------------------- readers
def read_simsiam(obj: Any):
    """facebookresearch/simsiam (main_simsiam.py) and our ``pretrain``: ``{'state_dict': ...}`` with the
    backbone under ``module.encoder.*`` (``encoder.*`` without DDP); ``encoder.fc.*`` is the projector,
    ``predictor.*`` the predictor."""
    return _tensors(_state_dict(obj)), _strip("module.encoder.", "encoder.")


def read_moco(obj: Any):
    """facebookresearch/moco (MoCo v1/v2, main_moco.py): ``{'state_dict': ...}`` with the query encoder under
    ``module.encoder_q.*`` (its ``fc`` is the MLP head); ``encoder_k.*`` (momentum encoder), ``queue`` and
    ``queue_ptr`` are dropped."""
    return _tensors(_state_dict(obj)), _strip("module.encoder_q.", "encoder_q.")


def read_mocov3(obj: Any):
    """facebookresearch/moco-v3 (ResNet, main_moco.py): ``{'state_dict': ...}`` with ``module.base_encoder.*``
    (its ``fc`` is the projector); ``momentum_encoder.*`` and ``predictor.*`` are dropped."""
    return _tensors(_state_dict(obj)), _strip("module.base_encoder.", "base_encoder.")


def read_dino(obj: Any):
    """facebookresearch/dino (main_dino.py, ResNet arch): ``{'teacher': ..., 'student': ...}``, each a
    MultiCropWrapper with ``backbone.*`` and ``head.*`` (``module.``-prefixed when DDP-wrapped). The
    teacher is read, as DINO's own evaluations do; the student is dropped."""
    tensors = _tensors({"teacher": obj["teacher"], "student": obj.get("student", {})})
    return tensors, _strip("teacher.module.backbone.", "teacher.backbone.")


def read_solo_learn(obj: Any):
    """vturrisi/solo-learn: a PyTorch Lightning checkpoint, ``{'state_dict': ..., 'pytorch-lightning_version'
    ...}`` with the backbone under ``backbone.*``; ``projector.*``, ``classifier.*`` (online linear probe),
    ``momentum_backbone.*`` and other heads are dropped. Its CIFAR ResNets pad the 3x3 conv1 by 2."""
    return _tensors(_state_dict(obj)), _strip("backbone.")


def read_vissl(obj: Any):
    """facebookresearch/vissl: ``{'classy_state_dict': {'base_model': {'model': {'trunk': ..., 'heads': ...}}}}``
    with trunk keys ``_feature_blocks.conv1.weight``, ``_feature_blocks.layer1.0...`` (torchvision names
    behind ``_feature_blocks.``); heads are dropped."""
    model = obj["classy_state_dict"]["base_model"]["model"]
    tensors = _tensors({"trunk": model.get("trunk", {}), "heads": model.get("heads", {})})
    return tensors, _strip("trunk._feature_blocks.", "trunk.")


def read_timm(obj: Any):
    """huggingface/pytorch-image-models (timm) ResNets (resnet18/34/50/101/152, wide_resnet, resnext): the same
    names as torchvision; either a bare state dict or timm's training checkpoint ``{'arch', 'state_dict',
    'state_dict_ema', 'version', ...}`` (``state_dict`` is read; ``state_dict_ema`` dropped)."""
    tensors = _tensors(_state_dict(obj))
    extra = _tensors(obj.get("state_dict_ema", {}), "state_dict_ema.") if "state_dict" in obj else {}
    return {**tensors, **extra}, _strip("")


def read_torchvision(obj: Any):
    """pytorch/vision ResNets: a bare ``model.state_dict()`` (``conv1.weight``, ``bn1.*``, ``layer1.0...``,
    ``fc.*``). Also what DINO, Barlow Twins, VICReg and SwAV publish as backbone-only weights."""
    return _tensors(obj), _strip("")


def read_plain(obj: Any):
    """SwAV / Barlow Twins / VICReg style training checkpoints (facebookresearch/swav, barlowtwins, vicreg):
    torchvision names behind ``module.`` and/or ``backbone.`` (e.g. ``module.conv1.weight``,
    ``module.backbone.layer1.0.conv1.weight``), possibly inside ``state_dict``/``model``; projection heads,
    prototypes and ``bn`` of the loss are dropped."""
    return _tensors(_state_dict(obj)), _strip("module.backbone.", "backbone.", "module.")


def read_detectron2(obj: Any):
    """facebookresearch/detectron2 weights: a pickle ``{'model': {name: ndarray}, '__author__', 'matching_heuristics'}``
    as MoCo's convert-pretrain-to-detectron2.py writes (``stem.conv1``, ``stem.conv1.norm``, ``res2``..``res5``,
    ``convK.norm``, ``shortcut``), or a trained model's ``{'model': {'backbone.bottom_up.*', 'roi_heads.res5.*'}}``."""
    return _tensors(_inner(obj, "model")), detectron2_to_torchvision


# ----------------------------------------------------------------------------- detection
@dataclass(frozen=True)
class Format:
    name: str
    read: Callable[[Any], Any]
    detect: Callable[[Any], bool]
    cifar_stem: str = "cifar"  # what a 3x3 conv1 is in this format (the tensors cannot tell its padding)


def _sd_has(*prefixes: str) -> Callable[[Any], bool]:
    return lambda obj: _has_prefix(_state_dict(obj), *prefixes)


def _is_dict(obj: Any, key: str) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping)


def _looks_lightning(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and ("pytorch-lightning_version" in obj or "global_step" in obj)
            and _sd_has("backbone.")(obj))


def _looks_detectron2(obj: Any) -> bool:
    if not isinstance(obj, Mapping):
        return False
    if "__author__" in obj or "matching_heuristics" in obj:
        return True
    return _is_dict(obj, "model") and _has_prefix(obj["model"], "stem.", "backbone.bottom_up.")


def _looks_timm(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and "state_dict" in obj and "arch" in obj
            and ("state_dict_ema" in obj or "version" in obj) and _sd_has("conv1.", "module.conv1.")(obj))


# Order matters: specific layouts first, the generic prefixed/plain dicts last.
FORMATS: tuple[Format, ...] = (
    Format("detectron2", read_detectron2, _looks_detectron2),
    Format("vissl", read_vissl, lambda obj: _is_dict(obj, "classy_state_dict")),
    Format("dino", read_dino, lambda obj: _is_dict(obj, "teacher")),
    Format("solo-learn", read_solo_learn, _looks_lightning, cifar_stem="cifar-pad2"),  # solo/methods/base.py
    Format("moco", read_moco, _sd_has("module.encoder_q.", "encoder_q.")),
    Format("mocov3", read_mocov3, _sd_has("module.base_encoder.", "base_encoder.")),
    Format("simsiam", read_simsiam, _sd_has("module.encoder.", "encoder.")),
    Format("timm", read_timm, _looks_timm),
    Format("torchvision", read_torchvision, lambda obj: _has_prefix(obj, "conv1.", "bn1.", "layer1.")),
    Format("plain", read_plain, _sd_has("module.", "backbone.", "conv1.")),
)
FORMAT_NAMES = tuple(f.name for f in FORMATS)


def get_format(name: str) -> Format:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise KeyError(name)


def detect_format(obj: Any) -> Format | None:
    """The first format whose key layout the object matches, or None."""
    return next((fmt for fmt in FORMATS if fmt.detect(obj)), None)


def first_keys(obj: Any, limit: int = 8) -> list[str]:
    """Up to ``limit`` keys of the object, descending into the model state dict when there is one."""
    if not isinstance(obj, Mapping):
        return [f"<{type(obj).__name__}>"]
    inner = _state_dict(obj)
    keys = [str(k) for k in inner] if inner is not obj else []
    return (keys or [str(k) for k in obj])[:limit]
