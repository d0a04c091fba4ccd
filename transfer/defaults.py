"""The ``transfer`` command's config keys and their defaults (the SimSiam/MoCo Table 5 protocol).

Set them like every other command's keys: flags, ``--config FILE.yaml`` and ``key=value``. The
Detectron2 recipe itself is a yacs config (``task``), changed with Detectron2's ``KEY VALUE`` pairs
(``opts``).
"""
from __future__ import annotations

TRANSFER_DEFAULTS = {
    "checkpoint": "",        # checkpoint file (any supported format) or random:ARCH[:STEM[:WIDTH]]
    "format": "auto",        # checkpoint format (auto-detected)
    "task": "",              # voc07 | voc0712 | coco_1x | coco_2x | a Detectron2 YAML config
    "opts": [],              # Detectron2 KEY VALUE overrides, e.g. [SOLVER.MAX_ITER, 1000]
    "trials": 5,             # fine-tuning runs, seeds seed..seed+trials-1 (the paper: 5)
    "seed": 0,               # seed of the first trial
    "num_gpus": 0,           # processes per trial; 0: every visible GPU, else 1 (gloo processes on a CPU)
    "ims_per_device": 0,     # images per device that fit; 0: estimated from GPU memory, no limit on a CPU
    "data_root": "",         # data sets folder; empty: $DETECTRON2_DATASETS, else ./datasets
    "output_dir": "",        # empty: runs/transfer/<data>/<checkpoint>-<sha256 prefix>
    "results": "",           # results database; empty: output_dir/results.db
    "name": "",              # row label in tables (default: the checkpoint file)
    "tags": [],              # labels stored with the records
    "dist_url": "auto",      # torch.distributed init URL for num_gpus > 1; auto: a free port
    "quiet": False,          # trial output to trial<i>/stdout.txt instead of the terminal
}
