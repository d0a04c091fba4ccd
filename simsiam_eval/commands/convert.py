"""``simsiam-eval convert INPUT OUTPUT [--to FORMAT] [--from FORMAT]``."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from simsiam_eval.checkpoints.readers import FORMATS
    from simsiam_eval.checkpoints.writers import TARGETS

    formats = "\n".join(f"  {fmt.name:<12} {fmt.read.__doc__.split(':')[0].strip()}" for fmt in FORMATS)
    parser = subparsers.add_parser(
        "convert", help="convert a ResNet checkpoint to Detectron2, torchvision, timm or safetensors, and verify it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read a checkpoint of any supported SSL codebase (format detected from its key layout), "
                    "keep the ResNet backbone, write it in the target format, read it back and compare: a "
                    "table of backbone tensors found / written / dropped, and a numerical check in the target "
                    "library when it is importable. Any missing backbone tensor is an error.",
        epilog="source formats (--from):\n" + formats + "\nINPUT may also be random:ARCH[:STEM[:WIDTH]], a "
               "seeded random initialisation.\n\nexamples:\n"
               "  simsiam-eval convert checkpoint_0199.pth.tar r50_d2.pkl\n"
               "  simsiam-eval convert moco_v2_800ep.pth.tar r50.safetensors --from moco\n"
               "  simsiam-eval convert r50_d2.pkl r50_timm.pth --to timm")
    parser.add_argument("input", help="checkpoint file (or random:ARCH[:STEM[:WIDTH]])")
    parser.add_argument("output", help="file to write (.pkl: detectron2, .safetensors: safetensors, "
                                       ".pth/.pt: torchvision unless --to says otherwise)")
    parser.add_argument("--to", dest="target", choices=TARGETS, default=None,
                        help="target format (default: from the output suffix)")
    parser.add_argument("--from", dest="source_format", default="auto", metavar="FORMAT",
                        help="source format (default: auto, detected from the key layout); one of "
                             + ", ".join(f.name for f in FORMATS))
    parser.add_argument("--arch", default=None, help="fail unless the checkpoint holds this arch (e.g. resnet50)")
    parser.add_argument("--no-numerical-check", dest="numerical", action="store_false",
                        help="skip the forward-pass comparison in the target library")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simsiam_eval.checkpoints.convert import convert_checkpoint
    from transfer.verify import LIBRARY_CHECKS

    report = convert_checkpoint(args.input, args.output, args.target, args.source_format, args.arch,
                                numerical=args.numerical, library_checks=LIBRARY_CHECKS)
    print(f"{args.input} ({report.source.source_format}, {report.source.arch}) -> {args.output} ({report.target})")
    print(report.table())
    return 0
