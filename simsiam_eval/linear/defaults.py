"""The linear protocol's defaults: config keys (``simsiam-eval linear --help`` lists them), modes,
optimisers and their main_lincls learning rates and batch sizes."""
from __future__ import annotations

OPTIMIZERS = ("lars", "sgd")
# lars: SimSiam's main_lincls.py --lars (--lr 0.1 x batch/256, -b 4096: lr 1.6). sgd: the lr and batch of MoCo's
# main_lincls.py (facebookresearch/moco 87e36d3: --lr 30, -b 256, lr not scaled by batch; 100 epochs, x0.1 at
# epochs 60 and 80), run here on SimSiam's cosine schedule and epochs; SimSiam's own code without --lars
# would run SGD at 0.1 x batch/256.
DEFAULT_BASE_LR = {"lars": 0.1, "sgd": 30.0}
DEFAULT_BATCH_SIZE = {"lars": 4096, "sgd": 256}

MODES = ("protocol", "cached")
LINEAR_DEFAULTS = {
    "checkpoint": "",            # checkpoint file (any supported format) or random:ARCH[:STEM[:WIDTH]]
    "format": "auto",
    "arch": "",                  # expected arch; empty: whatever the checkpoint holds
    "train": "",
    "val": "",
    "mode": "protocol",          # protocol (main_lincls) | cached (features computed once: a deviation)
    "views": 0,                  # cached: 0 = train on the eval view; N = N cached augmented views per image
    "label_fraction": 0.0,       # low-shot: 0.0 = all labels; e.g. 0.01, 0.1 = that fraction of each class
    "subset_seed": 0,            # low-shot: seed of the per-class draw (each seed a trial in tables)
    "subset_file": "",           # low-shot: file of image names (ImageFolder) or indices (arrays), one per line
    "epochs": 90,
    "optimizer": "lars",         # lars (SimSiam main_lincls --lars) | sgd (MoCo main_lincls' lr 30, batch 256)
    "batch_size": 0,             # 0: 4096 for lars, 256 for sgd (total over processes)
    "base_lr": 0.0,              # 0: 0.1 for lars, 30 for sgd; lr = base_lr * batch_size / 256
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lars": {
        "trust_coefficient": 0.001,
        "clip": False,
        "exclude_1d": False,     # True: biases (1-d) get neither adaptation nor weight decay (DINO style)
        "eps": 1.0e-8,
    },
    "image_size": 0,             # 0: the data's native size (CIFAR 32, MNIST 28, shapes as generated), 224 for folders
    "resize": 0,                 # 0: image_size * 256 / 224 (a data set at its native image_size is used as it is)
    "eval_batch_size": 256,      # images per batch for validation and feature extraction
    "workers": 8,
    "device": "auto",
    "amp": False,                # fp16 autocast for the frozen backbone on CUDA (official: fp32)
    "cpu_bf16": False,           # bf16 autocast + channels_last backbone on the CPU (official: fp32)
    "seed": 0,
    "resume": True,              # continue from output_dir/linear_state.pth when it is there
    "progress": True,
    "tensorboard": True,
    "cache": True,
    "cache_dir": "",             # empty: $SIMSIAM_EVAL_CACHE or ~/.cache/simsiam-eval/features
    "cache_dtype": "float32",
    "output_dir": "runs/linear", # linear_state.pth, metrics.jsonl, tensorboard/, linear.json, results.db
    "output": "",                # JSON record; empty: output_dir/linear.json
    "results": "",               # results database; empty: output_dir/results.db
    "name": "",                  # row label in tables (default: the checkpoint file)
    "tags": [],
}
