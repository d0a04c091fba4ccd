"""What the ``knn`` and ``linear`` commands share: flags that map onto config keys, and publishing."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping

from simsiam_eval.config import Config, load_config
from simsiam_eval.results.store import add_results_argument, publish_record, resolve_db_path


def add_evaluation_flags(parser: argparse.ArgumentParser) -> None:
    """Checkpoint, data, output and run flags common to every evaluation (each maps onto a config key)."""
    parser.add_argument("--checkpoint", metavar="CKPT",
                        help="checkpoint file in any supported format, or random:ARCH[:STEM[:WIDTH]]")
    parser.add_argument("--format", help="checkpoint format (default: detected from the keys)")
    parser.add_argument("--arch", help="expected architecture; a checkpoint holding another one is an error")
    parser.add_argument("--train", metavar="SPEC", help="training split: folder or kind:PATH[@split]")
    parser.add_argument("--val", metavar="SPEC", help="validation split: folder or kind:PATH[@split]")
    parser.add_argument("--image-size", type=int, help="side of the evaluated images (default: the data's native size, "
                                                      "224 for folders)")
    parser.add_argument("--batch-size", type=int, help="images per batch")
    parser.add_argument("--workers", type=int, help="data-loading processes")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="compute device")
    parser.add_argument("--cpu-bf16", dest="cpu_bf16", action="store_const", const=True,
                        help="backbone in bf16 autocast with channels_last on the CPU: faster on CPUs with "
                             "AVX512-BF16/AMX, a deviation from the official fp32 (recorded as precision cpu-bf16)")
    parser.add_argument("--cache-dir", help="feature cache folder (default $SIMSIAM_EVAL_CACHE or "
                                            "~/.cache/simsiam-eval/features)")
    parser.add_argument("--no-cache", dest="cache", action="store_const", const=False,
                        help="neither read nor write cached features")
    parser.add_argument("--output-dir", help="folder of the run's outputs (and of results.db by default)")
    parser.add_argument("--output", metavar="FILE.json", help="where to write the JSON record")
    add_results_argument(parser)
    parser.add_argument("--name", help="the checkpoint's row label in tables (default: its file name)")
    parser.add_argument("--tag", dest="tags", action="append", help="tag the record (repeatable)")
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                        help="no progress bars")
    parser.add_argument("--config", help="YAML file of config keys (flags and key=value override it)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key")


def flag_overrides(args: argparse.Namespace, defaults: Mapping) -> tuple[list[str], set[str]]:
    """``key=value`` strings for every flag given on the command line, and the set of those keys."""
    pairs, given = [], set()
    for name, value in vars(args).items():
        if value is None or name not in defaults or name == "config":
            continue
        if isinstance(value, (list, tuple)):
            value = "[" + ", ".join(str(v) for v in value) + "]"
        pairs.append(f"{name}={value}")
        given.add(name)
    given |= {item.partition("=")[0].strip() for item in args.overrides}
    return pairs + list(args.overrides), given


def evaluation_config(args: argparse.Namespace, defaults: Mapping) -> tuple[Config, set[str]]:
    """Defaults, then ``--config``, then flags, then ``key=value`` overrides."""
    overrides, given = flag_overrides(args, defaults)
    return load_config(args.config, defaults, overrides), given


def publish(record: dict, cfg: Config, default_name: str) -> Path:
    """Write the record to its JSON file (``cfg.output``, else ``output_dir/default_name``) and append it
    to the results database; return the JSON path."""
    json_path = Path(cfg.output) if cfg.output else Path(cfg.output_dir) / default_name
    publish_record(record, json_path, resolve_db_path(cfg.results or None, cfg.output_dir))
    return json_path
