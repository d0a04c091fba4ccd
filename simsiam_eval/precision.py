"""Numeric precision of a run, named the same way in every record and cache key.

The official SimSiam, main_lincls and DINO kNN code run in fp32 throughout; so do our defaults.
Two deviations, each asked for by its own key: ``amp=true`` (fp16 autocast, on CUDA only) and
``cpu_bf16=true`` (bf16 autocast with channels_last tensors, on the CPU only: fast where the CPU has
bf16 instructions, AVX512-BF16 or AMX).
"""
from __future__ import annotations

import contextlib

import torch

FP32 = "fp32"
AMP_FP16 = "amp-fp16"
CPU_BF16 = "cpu-bf16"  # bf16 autocast + channels_last on the CPU


def uses_amp(amp: bool, device: torch.device) -> bool:
    """fp16 autocast runs only where it was asked for and a CUDA device is in use."""
    return bool(amp) and device.type == "cuda"


def precision_name(amp: bool, device: torch.device, cpu_bf16: bool = False) -> str:
    """``fp32`` (the official precision), ``amp-fp16`` or ``cpu-bf16``, as recorded in records and cache keys."""
    if uses_amp(amp, device):
        return AMP_FP16
    if cpu_bf16 and device.type == "cpu":
        return CPU_BF16
    return FP32


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The autocast region of a forward pass at ``precision`` (none for fp32)."""
    if precision == AMP_FP16:
        return torch.autocast("cuda", dtype=torch.float16)
    if precision == CPU_BF16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(precision: str) -> torch.memory_format:
    """channels_last for ``cpu-bf16`` (oneDNN's fast layout), else PyTorch's default."""
    return torch.channels_last if precision == CPU_BF16 else torch.contiguous_format
