"""``simsiam-eval transfer --checkpoint CKPT --task voc07|voc0712|coco_1x|coco_2x|CONFIG.yaml [KEY VALUE ...]``."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from transfer.configs import TASKS

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
               "examples:\n"
               "  simsiam-eval transfer --checkpoint checkpoint_0199.pth.tar --task voc0712 --num-gpus 8\n"
               "  simsiam-eval transfer --checkpoint ckpt.pth.tar --task coco_1x --trials 1 SOLVER.MAX_ITER 1000\n"
               "  simsiam-eval transfer --checkpoint random:resnet50 --task smoke/faster_rcnn_shapes_voc.yaml "
               "--data-root DATA --trials 2")
    parser.add_argument("--checkpoint", metavar="CKPT", required=True,
                        help="ResNet checkpoint in any supported format, or random:resnet50")
    parser.add_argument("--format", default="auto", help="checkpoint format (default: detected from the keys)")
    parser.add_argument("--task", required=True, help=f"{', '.join(TASKS)}, or a Detectron2 YAML config")
    parser.add_argument("--trials", type=int, default=5, metavar="N", help="fine-tuning runs, seeds SEED..SEED+N-1 (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first trial (default 0)")
    parser.add_argument("--num-gpus", type=int, default=None, metavar="N",
                        help="processes per trial: GPUs (NCCL), or gloo processes on a CPU-only machine "
                             "(default: every visible GPU, else 1)")
    parser.add_argument("--ims-per-device", type=int, default=None, metavar="K",
                        help="images per device that fit in memory; a recipe batch that needs more is "
                             "linearly scaled down (default: estimated from GPU memory; no limit on CPU)")
    parser.add_argument("--data-root", metavar="DIR",
                        help="folder of the data sets ($DETECTRON2_DATASETS; default: that variable, else ./datasets)")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="run folder (default runs/transfer/<data>/<checkpoint>-<sha256 prefix>)")
    parser.add_argument("--results", metavar="DB", help="results database (default: results.db in the run folder)")
    parser.add_argument("--name", help="the checkpoint's row label in tables (default: its file name)")
    parser.add_argument("--tag", dest="tags", action="append", default=[], metavar="TAG", help="tag the records (repeatable)")
    parser.add_argument("--dist-url", default="auto", help="torch.distributed init URL for N > 1 (default: a free port)")
    parser.add_argument("--quiet", action="store_true",
                        help="send the trials' Detectron2 output to trial<i>/stdout.txt instead of the terminal")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="Detectron2 config overrides, after every option, e.g. SOLVER.MAX_ITER 1000 "
                             "MODEL.ROI_HEADS.NUM_CLASSES 6")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transfer.run import TransferOptions, run_transfer

    run_transfer(TransferOptions(
        checkpoint=args.checkpoint, task=args.task, trials=args.trials, num_gpus=args.num_gpus,
        output_dir=args.output_dir, opts=list(args.opts), checkpoint_format=args.format, data_root=args.data_root,
        seed=args.seed, ims_per_device=args.ims_per_device, results=args.results, tags=args.tags, name=args.name,
        dist_url=args.dist_url, quiet=args.quiet))
    return 0
