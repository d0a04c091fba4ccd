"""Numeric precision of a run, named the same way in every record and cache key.

The official SimSiam, main_lincls and DINO kNN code run in fp32 throughout; so do our defaults.
``amp=true`` (fp16 autocast) is a deviation that only acts on CUDA.
"""
from __future__ import annotations

import torch

FP32 = "fp32"
AMP_FP16 = "amp-fp16"


def uses_amp(amp: bool, device: torch.device) -> bool:
    """fp16 autocast runs only where it was asked for and a CUDA device is in use."""
    return bool(amp) and device.type == "cuda"


def precision_name(amp: bool, device: torch.device) -> str:
    """``fp32`` (the official precision) or ``amp-fp16``, as recorded in records and cache keys."""
    return AMP_FP16 if uses_amp(amp, device) else FP32
