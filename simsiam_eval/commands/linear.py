"""``simsiam-eval linear --checkpoint CKPT --train SPEC --val SPEC [--mode protocol|cached] ...``."""
from __future__ import annotations

import argparse

from simsiam_eval.commands._evaluation import add_evaluation_flags, evaluation_config, publish


def register(subparsers) -> None:
    from simsiam_eval.config import describe_keys
    from simsiam_eval.linear.defaults import LINEAR_DEFAULTS, MODES, OPTIMIZERS

    parser = subparsers.add_parser(
        "linear", help="linear-probe accuracy of a checkpoint's frozen features (main_lincls)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a linear classifier on the frozen pool5 features of a checkpoint. mode=protocol "
                    "reproduces SimSiam's main_lincls.py (LARS batch 4096 lr 1.6, cosine, 90 epochs, "
                    "RandomResizedCrop+flip, backbone checked unchanged; --optimizer sgd: MoCo's main_lincls "
                    "lr 30 and batch 256 on the same cosine schedule); the record's top-1/top-5 are the best "
                    "epoch's, as main_lincls reports them, beside the last epoch's; mode=cached trains the "
                    "same layer on features computed once (a documented deviation, much faster). Low-shot: "
                    "--label-fraction or --subset-file train on a subset of the training labels. "
                    "Resumable; metrics.jsonl per epoch; writes a JSON record and appends it to the results "
                    "database.\n\nSeveral processes: torchrun --nproc_per_node=N -m simsiam_eval linear ...",
        epilog="config keys and their defaults:\n" + describe_keys(LINEAR_DEFAULTS))
    add_evaluation_flags(parser)
    parser.add_argument("--mode", choices=MODES, help="protocol (main_lincls) or cached features")
    parser.add_argument("--views", type=int, help="cached mode: augmented views cached per image "
                                                  "(0: train on the centre-crop view)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS,
                        help="lars (SimSiam's main_lincls --lars: apex LARC semantics; default) or sgd (the lr "
                             "30 / batch 256 of MoCo's main_lincls, here with the cosine schedule)")
    parser.add_argument("--epochs", type=int, help="training epochs (default 90)")
    parser.add_argument("--base-lr", type=float,
                        help="lr = base_lr * batch_size / 256 (default 0.1 lars as SimSiam, 30 sgd as MoCo)")
    parser.add_argument("--seed", type=int, help="seed of the classifier init and the data order")
    parser.add_argument("--label-fraction", type=float, metavar="F",
                        help="low-shot: train on round(F x class size) images of each class (e.g. 0.01, 0.1; "
                             "0 = all labels); validation stays on the full val set")
    parser.add_argument("--subset-seed", type=int, metavar="N",
                        help="low-shot: seed of the per-class draw (a trial in tables)")
    parser.add_argument("--subset-file", metavar="FILE",
                        help="low-shot: train on the images FILE lists, one per line (file names such as the "
                             "ImageNet 1%%/10%% lists' n01440764_10026.JPEG; indices for CIFAR/MNIST)")
    parser.add_argument("--no-resume", dest="resume", action="store_const", const=False,
                        help="start over even if output_dir holds a saved state")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simsiam_eval.distributed import cleanup, init_distributed
    from simsiam_eval.linear.defaults import LINEAR_DEFAULTS
    from simsiam_eval.linear.evaluate import check_linear_config, run_linear

    cfg, _ = evaluation_config(args, LINEAR_DEFAULTS)
    check_linear_config(cfg)
    info = init_distributed(cfg.device)
    try:
        record = run_linear(cfg, info)
        if info.is_main:
            path = publish(record, cfg, "linear.json")
            m = record["metrics"]
            settings = record["settings"]
            labels = f", {settings['subset_size']} labelled images" if settings["subset_hash"] else ""
            print(f"linear ({cfg.mode}, {cfg.optimizer}, {cfg.epochs} epochs{labels}): best epoch "
                  f"{m['best_epoch']:.0f} (main_lincls' headline): top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%; "
                  f"last epoch: top-1 {m['last_top1']:.2f}%  top-5 {m['last_top5']:.2f}%")
            print(f"record: {path}")
    finally:
        cleanup()
    return 0
