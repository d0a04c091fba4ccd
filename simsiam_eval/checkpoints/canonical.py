"""The canonical form of a checkpoint: a torchvision ResNet backbone state dict (no ``fc``) plus metadata.

The architecture is inferred from the tensors themselves (block type and count per stage, grouped /
wide bottlenecks, stem kernel and width), so the CIFAR variant of ``simsiam_eval/models.py`` loads too.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torchvision.models.resnet import ResNet

from simsiam_eval.errors import UserError
from simsiam_eval.models import RESNET_LAYOUTS, resnet

BACKBONE_KEY = re.compile(r"^(conv1\.|bn1\.|layer[1-4]\.)")
STAGE_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")

ARCH_NAMES = tuple(RESNET_LAYOUTS)
_ARCH_BY_LAYOUT = {layout: arch for arch, layout in RESNET_LAYOUTS.items()}


@dataclass
class CanonicalCheckpoint:
    """A ResNet backbone in torchvision's parameter names (``fc`` excluded) and where it came from."""

    state_dict: dict[str, torch.Tensor]
    arch: str
    stem: str = "imagenet"          # "imagenet" (7x7/2 + max-pool), "cifar" (3x3/1, no max-pool) or
                                    # "cifar-pad2" (the same, conv1 padded by 2: solo-learn)
    width: int = 64                 # output channels of conv1 (64 for every torchvision ResNet)
    source_format: str = "torchvision"
    path: str | None = None
    sha256: str | None = None
    found: list[str] = field(default_factory=list)     # source keys that became backbone tensors
    dropped: list[str] = field(default_factory=list)   # source tensor keys left out (heads, fc, ...)
    dropped_groups: dict[str, int] = field(default_factory=dict)  # e.g. {"module.predictor.*": 6}
    filled: list[str] = field(default_factory=list)    # keys absent in the source, filled in (BN counters)
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. epoch, original arch string

    @property
    def feature_dim(self) -> int:
        """Width of the pool5 features."""
        return self.state_dict[last_stage_key(self.state_dict)].shape[0]

    def record(self) -> dict[str, Any]:
        """The ``checkpoint`` part of a result record (``epochs``: pretraining epochs, when the file says)."""
        epochs = self.metadata.get("epoch")
        return {"path": self.path, "sha256": self.sha256, "arch": self.arch, "stem": self.stem,
                "width": self.width, "format": self.source_format,
                "epochs": epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None}


def last_stage_key(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Key of the BN weight that ends the backbone (its size is the feature width)."""
    last_block = max(int(m.group(2)) for k in state_dict if (m := STAGE_KEY.match(k)) and m.group(1) == "4")
    prefix = f"layer4.{last_block}."
    return prefix + ("bn3.weight" if prefix + "bn3.weight" in state_dict else "bn2.weight")


@dataclass(frozen=True)
class ResNetSpec:
    """What is needed to build the module that a backbone state dict belongs to."""

    arch: str
    stem: str = "imagenet"
    width: int = 64


def infer_spec(state_dict: Mapping[str, torch.Tensor], where: str = "checkpoint") -> ResNetSpec:
    """Arch, stem and width from key layout and tensor shapes; a UserError if it is no torchvision-style ResNet."""
    conv1 = state_dict.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        raise UserError(f"{where}: no ResNet stem (conv1.weight) among the backbone tensors")
    kernel = conv1.shape[-1]
    if kernel not in (3, 7):
        raise UserError(f"{where}: conv1 has a {kernel}x{kernel} kernel; expected 7x7 (ImageNet stem) or 3x3 (CIFAR stem)")
    stem, width = ("cifar" if kernel == 3 else "imagenet"), int(conv1.shape[0])
    blocks = [0, 0, 0, 0]
    for key in state_dict:
        if m := STAGE_KEY.match(key):
            stage, index = int(m.group(1)) - 1, int(m.group(2))
            blocks[stage] = max(blocks[stage], index + 1)
    if 0 in blocks:
        raise UserError(f"{where}: ResNet stages incomplete (blocks per stage {blocks})")
    block = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    groups, width_per_group = 1, 64
    if block == "bottleneck":
        conv2 = state_dict.get("layer1.0.conv2.weight")
        if conv2 is None or conv2.ndim != 4:
            raise UserError(f"{where}: bottleneck ResNet without layer1.0.conv2.weight")
        groups = int(conv2.shape[0] // conv2.shape[1])
        width_per_group = int(conv2.shape[0] // groups) * 64 // width
    key = (block, tuple(blocks), groups, width_per_group)
    arch = _ARCH_BY_LAYOUT.get(key)
    if arch is None or (stem == "cifar" and (groups, width_per_group) != (1, 64)):
        raise UserError(f"{where}: ResNet layout not supported ({block} blocks {blocks}, groups {groups}, "
                        f"width per group {width_per_group}, {stem} stem); supported: {', '.join(ARCH_NAMES)}")
    if stem == "imagenet" and width != 64:
        raise UserError(f"{where}: ImageNet-stem ResNet with conv1 width {width}; torchvision ResNets are 64 wide")
    return ResNetSpec(arch, stem, width)


def expected_shapes(spec: ResNetSpec) -> dict[str, tuple[int, ...]]:
    """Backbone key -> shape of the module for ``spec`` (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        module = resnet(spec.arch, spec.stem, spec.width)
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if BACKBONE_KEY.match(k)}


def check_complete(state_dict: dict[str, torch.Tensor], spec: ResNetSpec, where: str) -> list[str]:
    """Raise if a backbone tensor is missing, extra or misshaped; fill absent BN counters. Returns filled keys."""
    expected = expected_shapes(spec)
    filled = []
    for key in expected:
        if key not in state_dict and key.endswith("num_batches_tracked"):
            state_dict[key] = torch.tensor(0, dtype=torch.long)
            filled.append(key)
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if missing or extra or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{label}: {len(keys)} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
        raise UserError(f"{where}: backbone tensors do not form a {spec.arch} ({spec.stem} stem): " + "; ".join(parts))
    return filled


def build_backbone(ckpt: CanonicalCheckpoint, device: str | torch.device = "cpu") -> ResNet:
    """The backbone as a module in eval mode: ``fc`` replaced by Identity, so ``forward`` gives pool5 features.

    The module owns copies of the checkpoint's tensors (built on the meta device, then assigned: no
    random initialisation is spent), in float32, so training it leaves ``ckpt.state_dict`` untouched.
    """
    with torch.device("meta"):
        module = resnet(ckpt.arch, ckpt.stem, ckpt.width)
    module.fc = nn.Identity()
    state = {k: v.to(torch.float32, copy=True) if v.is_floating_point() else v.clone()
             for k, v in ckpt.state_dict.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module.to(device).eval()


def random_checkpoint(spec_text: str) -> CanonicalCheckpoint:
    """``random:ARCH[:STEM[:WIDTH]]``: a randomly initialised backbone (seed 0, torchvision's init)."""
    parts = spec_text.split(":")[1:]
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise UserError(f"bad random spec '{spec_text}': use random:ARCH[:STEM[:WIDTH]], e.g. random:resnet18:cifar")
    arch = parts[0]
    stem = parts[1] if len(parts) > 1 and parts[1] else "imagenet"
    try:
        width = int(parts[2]) if len(parts) > 2 else 64
    except ValueError:
        raise UserError(f"bad random spec '{spec_text}': WIDTH must be an integer") from None
    if arch not in ARCH_NAMES:
        raise UserError(f"bad random spec '{spec_text}': unknown arch '{arch}' (choose from {', '.join(ARCH_NAMES)})")
    if stem not in ("imagenet", "cifar"):
        raise UserError(f"bad random spec '{spec_text}': stem must be imagenet or cifar")
    if stem == "imagenet" and width != 64:
        raise UserError(f"bad random spec '{spec_text}': WIDTH applies to the cifar stem only")
    spec = ResNetSpec(arch, stem, width)
    if stem == "cifar" and not arch.startswith("resnet"):
        raise UserError(f"bad random spec '{spec_text}': the cifar stem supports plain ResNets (resnet18..152) only")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = resnet(spec.arch, spec.stem, spec.width)
    state = {k: v for k, v in module.state_dict().items() if BACKBONE_KEY.match(k)}
    canonical = f"random:{arch}:{stem}:{width}"
    return CanonicalCheckpoint(state, arch, stem, width, source_format="random", path=canonical,
                               sha256=hashlib.sha256(f"{canonical}:seed0".encode()).hexdigest(),
                               found=list(state))
