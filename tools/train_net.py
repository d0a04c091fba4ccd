#!/usr/bin/env python
"""Detectron2's usual train_net command line for the detection-transfer trainer (transfer/trainer.py):

    python tools/train_net.py --config-file configs/detectron2/pascal_voc07_R_50_C4.yaml \
        --num-gpus 8 MODEL.WEIGHTS converted.pkl OUTPUT_DIR runs/voc07

MODEL.WEIGHTS is a checkpoint converted to Detectron2 names (simsiam-eval convert --to detectron2);
`simsiam-eval transfer` does the conversion, the checks, several trials and the records for you.
"""
from transfer.trainer import cli

if __name__ == "__main__":
    raise SystemExit(cli())
