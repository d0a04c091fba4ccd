"""``simsiam-eval transfer --checkpoint CKPT --task voc07|voc0712|coco_1x|coco_2x|CONFIG.yaml [key=value ...] [KEY VALUE ...]``."""
from __future__ import annotations

import argparse

from simsiam_eval.commands._evaluation import flag_overrides


def register(subparsers) -> None:
    from simsiam_eval.config import describe_keys
    from transfer.configs import TASKS
    from transfer.defaults import TRANSFER_DEFAULTS

    tasks = "\n".join(f"  {name:<8} {task.summary}" for name, task in TASKS.items())
    parser = subparsers.add_parser(
        "transfer", help="fine-tune R50-C4 Faster/Mask R-CNN on VOC or COCO (Detectron2), several trials",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The SimSiam paper's Table 5 protocol: convert the checkpoint to Detectron2 (verified), "
                    "check data, weights and classes, fine-tune the recipe's detector for N trials with "
                    "distinct seeds (one folder each; finished trials are skipped on a re-run, an interrupted "
                    "one resumes from its last checkpoint), then print mean ± sample std of AP, AP50, AP75 "
                    "(and mask AP) and write a record per trial and for the aggregate. Needs detectron2 "
                    "(README, section Detection transfer).",
        epilog="tasks (configs/detectron2/):\n" + tasks + "\n  FILE.yaml any Detectron2 config, e.g. "
               "smoke/faster_rcnn_shapes_voc.yaml (10 CPU iterations on the shapes data)\n\n"
               "data sets: standard names under --data-root ($DETECTRON2_DATASETS: VOC2007/, VOC2012/, coco/), "
               "or in DATASETS.TRAIN/TEST\n  voc:FOLDER@SPLIT or coco:FILE.json[@IMAGE_ROOT] (relative to --data-root)\n\n"
               "config keys and their defaults (flags, --config FILE.yaml and key=value set them):\n"
               + describe_keys(TRANSFER_DEFAULTS) + "\n\n"
               "examples:\n"
               "  simsiam-eval transfer --checkpoint checkpoint_0199.pth.tar --task voc0712 --num-gpus 8\n"
               "  simsiam-eval transfer --checkpoint ckpt.pth.tar --task coco_1x trials=1 SOLVER.MAX_ITER 1000\n"
               "  simsiam-eval transfer --checkpoint random:resnet50 --task smoke/faster_rcnn_shapes_voc.yaml "
               "--data-root DATA --trials 2")
    parser.add_argument("--checkpoint", metavar="CKPT", help="ResNet checkpoint in any supported format, or random:resnet50")
    parser.add_argument("--format", help="checkpoint format (default: detected from the keys)")
    parser.add_argument("--task", help=f"{', '.join(TASKS)}, or a Detectron2 YAML config")
    parser.add_argument("--trials", type=int, metavar="N", help="fine-tuning runs, seeds SEED..SEED+N-1 (default 5)")
    parser.add_argument("--seed", type=int, help="seed of the first trial (default 0)")
    parser.add_argument("--num-gpus", dest="num_gpus", type=int, metavar="N",
                        help="processes per trial: GPUs (NCCL), or gloo processes on a CPU-only machine "
                             "(default: every visible GPU, else 1)")
    parser.add_argument("--ims-per-device", dest="ims_per_device", type=int, metavar="K",
                        help="images per device that fit in memory; a recipe batch that needs more is "
                             "linearly scaled down (default: estimated from GPU memory; no limit on CPU)")
    parser.add_argument("--data-root", dest="data_root", metavar="DIR",
                        help="folder of the data sets ($DETECTRON2_DATASETS; default: that variable, else ./datasets)")
    parser.add_argument("--output-dir", dest="output_dir", metavar="DIR",
                        help="run folder (default runs/transfer/<data>/<checkpoint>-<sha256 prefix>)")
    parser.add_argument("--results", metavar="DB", help="results database (default: results.db in the run folder)")
    parser.add_argument("--name", help="the checkpoint's row label in tables (default: its file name)")
    parser.add_argument("--tag", dest="tags", action="append", metavar="TAG", help="tag the records (repeatable)")
    parser.add_argument("--dist-url", dest="dist_url", help="torch.distributed init URL for N > 1 (default: a free port)")
    parser.add_argument("--quiet", action="store_const", const=True,
                        help="send the trials' Detectron2 output to trial<i>/stdout.txt instead of the terminal")
    parser.add_argument("--config", help="YAML file of config keys (flags and key=value override it)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value | KEY VALUE",
                        help="after every option: our config keys as key=value (e.g. trials=1), and "
                             "Detectron2 config overrides as KEY VALUE pairs (e.g. SOLVER.MAX_ITER 1000)")
    parser.set_defaults(func=run)


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Our ``key=value`` items (lower-case keys) apart from Detectron2's ``KEY VALUE`` pairs."""
    ours, detectron2_opts, rest = [], [], list(items)
    while rest:
        item = rest.pop(0)
        if "=" in item and item[:1].islower():
            ours.append(item)
        else:
            detectron2_opts += [item, *rest[:1]]
            rest = rest[1:]
    return ours, detectron2_opts


def run(args: argparse.Namespace) -> int:
    from simsiam_eval.config import load_config
    from transfer.defaults import TRANSFER_DEFAULTS
    from transfer.run import run_transfer

    ours, detectron2_opts = split_overrides(list(args.overrides))
    args.overrides = ours
    overrides, _ = flag_overrides(args, TRANSFER_DEFAULTS)
    cfg = load_config(args.config, TRANSFER_DEFAULTS, overrides)
    cfg["opts"] = [*cfg.opts, *detectron2_opts]
    run_transfer(cfg)
    return 0
