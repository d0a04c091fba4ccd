#!/usr/bin/env python
"""Time the conversion of a ResNet-50 SimSiam checkpoint (official layout, ~200 MB with the projector and
predictor) to each target format on CPU: read + write + verification (re-read and numerical check).
Target: < 5 s per conversion. Prints the figures; exits 1 if a conversion is over the target."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from pretrain.model import SimSiam
from simsiam_eval.checkpoints.convert import convert_checkpoint
from transfer.verify import LIBRARY_CHECKS

TARGET_SECONDS = 5.0
OUTPUTS = {"detectron2": "r50.pkl", "torchvision": "r50.pth", "timm": "r50_timm.pth", "safetensors": "r50.safetensors"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--repeats", type=int, default=1, help="conversions per target (the best is reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "checkpoint_0099.pth.tar"
        model = SimSiam(args.arch)
        state = {f"module.{k}": v for k, v in model.state_dict().items()}
        torch.save({"epoch": 100, "arch": args.arch, "state_dict": state}, source)
        print(f"source: {args.arch} SimSiam checkpoint, {source.stat().st_size / 2**20:.0f} MB, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        slow = False
        for target, name in OUTPUTS.items():
            times, report = [], None
            for _ in range(args.repeats):
                start = time.perf_counter()
                report = convert_checkpoint(source, Path(tmp) / name, target, library_checks=LIBRARY_CHECKS)
                times.append(time.perf_counter() - start)
            seconds = min(times)
            slow |= seconds >= TARGET_SECONDS
            numeric = report.checks[-1]
            print(f"{target:<12} {seconds:6.2f} s  (target < {TARGET_SECONDS:g} s)  "
                  f"{report.written} tensors; {numeric.name}: {numeric.detail if numeric.passed is not None else 'skipped'}")
    return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
