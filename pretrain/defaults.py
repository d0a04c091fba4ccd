"""Every pretraining config key and its default: the official ImageNet ResNet-50 recipe.

Presets in configs/pretrain/ override these (CIFAR appendix recipe, CPU-sized shapes run).
"""

PRETRAIN_DEFAULTS = {
    "output_dir": "runs/pretrain",
    "seed": 0,
    "epochs": 100,
    "batch_size": 512,           # total over all processes, as in main_simsiam.py
    "workers": 8,                # data-loading processes per training process
    "resume": "auto",            # auto (newest checkpoint in output_dir) | none | PATH
    "keep_last": 0,              # keep only the newest N checkpoints (0: keep all, as the official code)
    "device": "auto",            # auto (cuda if available) | cpu | cuda
    "deterministic": False,      # deterministic cuDNN/algorithms (slower on GPU)
    "amp": False,                # fp16 autocast + GradScaler on CUDA (official: fp32; ignored on CPU)
    "channels_last": True,       # channels_last memory format on CUDA (ignored on CPU)
    "cpu_bf16": False,           # bf16 autocast + channels_last on the CPU (a deviation; official: fp32)
    "tensorboard": True,
    "progress": True,            # tqdm progress bar
    "data": {
        "train": "",             # dataset spec (required): folder, cifar10:DIR, shapes:DIR, ...
        "fraction": 1.0,         # < 1: train on a fixed class-balanced subset of that share of the images (seed 0)
        "image_size": 224,
        "min_scale": 0.2,
        "blur": True,
    },
    "model": {
        "arch": "resnet50",      # resnet18 | resnet34 | resnet50 | resnet101
        "stem": "imagenet",      # imagenet (torchvision) | cifar (3x3 stride-1 conv, no max-pool)
        "width": 64,             # base width of the CIFAR stem variant
        "dim": 2048,
        "pred_dim": 512,
        "proj_layers": 3,
        "predictor": True,       # False: the paper's no-predictor ablation
        "frozen_predictor": False,  # True: the predictor stays at its random init (paper Table 1b)
        "bn_heads": "hidden+output",  # BN in the MLP heads (paper Table 3): none | hidden | hidden+output | all
        "sync_bn": True,         # SyncBatchNorm when training on several processes
    },
    "loss": {
        "similarity": "cosine",  # cosine | cross_entropy
        "symmetric": True,
        "stop_gradient": True,   # False: the paper's collapsing ablation
        "pairs": 1,              # pairs of views per image and step; 2 with symmetric false: "asymmetric 2x"
    },
    "target": {                  # where the loss's targets come from (paper Sec. 5 and 6; pretrain/targets.py)
        "kind": "online",        # online (SimSiam) | alternation | expectation | momentum_encoder
        "steps": 10,             # alternation: SGD steps per set of pre-computed targets (0: one epoch)
        "average_momentum": 0.8,  # expectation: eta_x <- m eta_x + (1 - m) F(T'(x)) (the paper's m)
        "momentum": 0.996,       # momentum_encoder: BYOL's base EMA momentum, raised to 1 by a cosine
    },
    "optim": {
        "base_lr": 0.05,         # lr = base_lr * batch_size / 256
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "fix_pred_lr": True,     # predictor keeps the initial lr (official recommendation)
        "warmup_epochs": 0,      # linear warm-up (the paper uses 10 for batch >= 1024)
        "schedule": "cosine",    # cosine (official) | constant: no decay after warm-up (a deviation, docs/study.md)
        "decay_norm_and_bias": True,  # False: no weight decay on 1-d parameters (BN, biases); a deviation
    },
    "monitor": {
        "collapse_ratio": 0.5,   # warn when std(z/|z|) is below this fraction of the way from the
                                 # collapsed floor (2/sqrt(B) / sqrt(dim), pretrain/collapse.py) up to 1/sqrt(dim)
    },
    "knn": {
        "every_n_epochs": 0,     # 0: no kNN monitor
        "train": "",             # dataset spec of the kNN memory bank
        "val": "",               # dataset spec of the kNN queries
        "k": 200,
        "temperature": 0.1,
        "image_size": 0,         # 0: native size of knn.train's images (CIFAR 32, used as they are); 224 for folders
    },
}
