"""``simsiam-eval <command>``: a thin layer that parses arguments and calls the library."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

from simsiam_eval import __version__
from simsiam_eval.errors import UserError, one_line

import simsiam_eval.commands


def command_modules() -> list[str]:
    """One module per command in simsiam_eval/commands; each defines ``register(subparsers)``."""
    return sorted(m.name for m in pkgutil.iter_modules(simsiam_eval.commands.__path__) if not m.name.startswith("_"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simsiam-eval",
        description="Train SimSiam checkpoints and evaluate ResNet checkpoints with the standard "
                    "self-supervised protocols. Run 'simsiam-eval COMMAND --help' for details.",
    )
    parser.add_argument("--version", action="version", version=f"simsiam-eval {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        importlib.import_module(f"simsiam_eval.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"simsiam-eval {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simsiam-eval {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
