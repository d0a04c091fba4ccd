"""``simsiam-eval knn --checkpoint CKPT --train SPEC --val SPEC [--k 200] [--temperature 0.1] ...``."""
from __future__ import annotations

import argparse
import time

from simsiam_eval.commands._evaluation import add_evaluation_flags, evaluation_config, publish


def register(subparsers) -> None:
    from simsiam_eval.config import describe_keys
    from simsiam_eval.knn.defaults import BACKENDS, KNN_DEFAULTS, PRESETS, SEARCH_PRECISIONS, WEIGHTINGS

    presets = "; ".join(f"{name}: k {v['k']}, T {v['temperature']}"
                        + (f", {v['interpolation']} resize" if "interpolation" in v else "")
                        for name, v in PRESETS.items())
    parser = subparsers.add_parser(
        "knn", help="weighted kNN accuracy of a checkpoint's frozen features",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Weighted kNN classification (InstDisc/DINO protocol) on L2-normalised pool5 features "
                    "of a frozen backbone: class score = sum of exp(sim/T) over the k nearest training "
                    "images. Features are cached per checkpoint/data/transform. Writes a JSON record and "
                    "appends it to the results database.\n\nSeveral processes: torchrun --nproc_per_node=N "
                    "-m simsiam_eval knn ...",
        epilog="config keys and their defaults:\n" + describe_keys(KNN_DEFAULTS))
    add_evaluation_flags(parser)
    parser.add_argument("--k", type=int, nargs="+", help="number(s) of neighbours, e.g. --k 10 20 100 200 "
                                                         "(the first is the headline number)")
    parser.add_argument("--temperature", type=float, help="T of the exp(sim/T) weights")
    parser.add_argument("--preset", choices=sorted(PRESETS), help=f"published settings ({presets}); "
                                                                  "--k/--temperature still win")
    parser.add_argument("--weighting", choices=WEIGHTINGS, help="exp(sim/T) weights or a uniform vote")
    parser.add_argument("--backend", choices=BACKENDS, help="neighbour search (auto: FAISS when installed)")
    parser.add_argument("--search-precision", choices=SEARCH_PRECISIONS,
                        help="precision of the candidate matmul: bfloat16 on CPUs with AVX512-BF16/AMX, float16 "
                             "on GPUs; candidates are re-scored in float32 and certified, so predictions are "
                             "those of float32 (default float32)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simsiam_eval.distributed import cleanup, init_distributed
    from simsiam_eval.knn.defaults import KNN_DEFAULTS
    from simsiam_eval.knn.evaluate import apply_preset, check_knn_config, run_knn

    cfg, given = evaluation_config(args, KNN_DEFAULTS)
    cfg = apply_preset(cfg, given)
    check_knn_config(cfg)
    info = init_distributed(cfg.device)
    try:
        record = run_knn(cfg, info)
        if info.is_main:
            path = publish(record, cfg, f"knn-{time.strftime('%Y%m%d-%H%M%S')}.json")
            for k, m in record["settings"]["per_k"].items():
                print(f"kNN k={k} T={cfg.temperature}: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%")
            print(f"record: {path}")
    finally:
        cleanup()
    return 0
