"""The kNN protocol's defaults: config keys (``simsiam-eval knn --help`` lists them), presets, choices."""
from __future__ import annotations

PRESETS = {
    "instdisc": {"k": [200], "temperature": 0.1},       # InstDisc, MoCo colab, lightly, VISSL
    "simsiam-cifar": {"k": [200], "temperature": 0.2},  # official SimSiam CIFAR monitor (issue 10)
    # DINO eval_knn: 20-NN first = headline; Resize(256, bicubic) + CenterCrop(224) before the features
    "dino": {"k": [20, 10, 100, 200], "temperature": 0.07, "interpolation": "bicubic"},
}
WEIGHTINGS = ("exp", "uniform")
BACKENDS = ("auto", "faiss", "torch")
SEARCH_PRECISIONS = ("float32", "bfloat16", "float16")

KNN_DEFAULTS = {
    "checkpoint": "",            # checkpoint file (any supported format) or random:ARCH[:STEM[:WIDTH]]
    "format": "auto",            # checkpoint format (auto-detected)
    "arch": "",                  # expected arch; empty: whatever the checkpoint holds
    "train": "",                 # dataset spec of the memory bank
    "val": "",                   # dataset spec of the queries
    "preset": "",                # instdisc | simsiam-cifar | dino: sets k and temperature
    "k": [200],                  # several k are evaluated in one search; the first is the headline
    "temperature": 0.1,
    "weighting": "exp",          # exp (exp(sim/T) per neighbour) | uniform (one vote per neighbour)
    "backend": "auto",           # auto (faiss if installed) | faiss | torch
    "search_precision": "float32",  # float32 | bfloat16 (CPU) | float16 (GPU): candidate matmul; same predictions
    "image_size": 0,             # 0: the data's native size (CIFAR 32, MNIST 28, shapes as generated), 224 for folders
    "resize": 0,                 # 0: image_size * 256 / 224 (a data set at its native image_size is used as it is)
    "interpolation": "bilinear", # bilinear (main_lincls) | bicubic (DINO eval_knn; the dino preset)
    "batch_size": 256,
    "workers": 8,
    "device": "auto",
    "amp": False,                # fp16 autocast feature extraction on CUDA (official: fp32)
    "cpu_bf16": False,           # bf16 autocast + channels_last extraction on the CPU (official: fp32)
    "progress": True,
    "cache": True,               # reuse / store features in cache_dir
    "cache_dir": "",             # empty: $SIMSIAM_EVAL_CACHE or ~/.cache/simsiam-eval/features
    "cache_dtype": "float32",    # float32 | float16 (half the disk space)
    "output_dir": "runs/eval",   # default home of the JSON record and results.db
    "output": "",                # JSON record; empty: output_dir/knn-<time>.json
    "results": "",               # results database; empty: output_dir/results.db
    "name": "",                  # row label in tables (default: the checkpoint file)
    "tags": [],                  # labels stored with the record (for tables)
}
