#!/usr/bin/env python
"""Drop-in for MoCo's detection/convert-pretrain-to-detectron2.py: ``INPUT OUTPUT``, same positional
interface, but the source format is detected (SimSiam, MoCo, MoCo v3, DINO, solo-learn, VISSL, ...),
fc/projector/predictor are dropped, and the written .pkl is verified (a missing backbone tensor is an
error, never a silently empty model). Same as ``simsiam-eval convert INPUT OUTPUT --to detectron2``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simsiam_eval.cli import main

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1].startswith("-"):
        print(f"usage: {Path(sys.argv[0]).name} INPUT OUTPUT.pkl", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(["convert", sys.argv[1], sys.argv[2], "--to", "detectron2"]))
