"""``simsiam-eval pretrain [CONFIG.yaml] [key=value ...]``."""
from __future__ import annotations

import argparse

from simsiam_eval.config import describe_keys, load_config

DEFAULT_CONFIG = "pretrain/shapes_cpu"


def register(subparsers) -> None:
    from pretrain.defaults import PRETRAIN_DEFAULTS

    parser = subparsers.add_parser(
        "pretrain", help="train a SimSiam checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain SimSiam (Chen & He, 2021) with the official recipe. Checkpoints "
                    "(checkpoint_XXXX.pth.tar, official layout), metrics.jsonl, TensorBoard logs and the "
                    "resolved config.yaml go to output_dir; a re-run resumes from the newest checkpoint.\n\n"
                    "Several processes: torchrun --nproc_per_node=N -m simsiam_eval pretrain CONFIG.yaml\n"
                    "(NCCL on GPUs, gloo on CPU; multi-node with torchrun's --nnodes/--rdzv flags).",
        epilog="config keys and their defaults (the official ImageNet ResNet-50 recipe):\n"
               + describe_keys(PRETRAIN_DEFAULTS))
    parser.add_argument("config", nargs="?", default=DEFAULT_CONFIG,
                        help="YAML config file or preset name (default: %(default)s, a CPU-sized run on "
                             "the synthetic shapes data, generated on first use); presets live in configs/")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config keys, e.g. epochs=10 optim.base_lr=0.1 data.train=cifar10:DIR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pretrain.defaults import PRETRAIN_DEFAULTS
    from pretrain.train import train
    from simsiam_eval.errors import UserError

    config, overrides = args.config, list(args.overrides)
    if "=" in config:  # only overrides were given: they follow the default config
        config, overrides = DEFAULT_CONFIG, [config] + overrides
    cfg = load_config(config, PRETRAIN_DEFAULTS, overrides)
    if not cfg.data.train:
        raise UserError("data.train is empty: give a dataset spec, e.g. data.train=cifar10:DIR@train")
    train(cfg)
    return 0
