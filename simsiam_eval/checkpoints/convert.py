"""``convert_checkpoint``: read any supported checkpoint, write it in a target format, verify the result."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from simsiam_eval.checkpoints.read import read_checkpoint
from simsiam_eval.checkpoints.verify import NumericalCheck, Verification, verify_conversion
from simsiam_eval.checkpoints.writers import TARGETS, target_from_suffix, write_checkpoint
from simsiam_eval.errors import UserError


def convert_checkpoint(source: str | os.PathLike, output: str | os.PathLike, target: str | None = None,
                       fmt: str = "auto", arch: str | None = None, numerical: bool = True,
                       library_checks: Mapping[str, NumericalCheck] | None = None) -> Verification:
    """Convert ``source`` to ``output`` in ``target`` format (inferred from the suffix when None) and verify it
    (``library_checks``: see ``verify_conversion``, e.g. ``transfer.verify.LIBRARY_CHECKS`` for Detectron2).

    On a failed verification the output is removed and a UserError raised: no half-right file is left.
    """
    target = target or target_from_suffix(output)
    if target is None:
        raise UserError(f"{output}: cannot tell the target format from the suffix; give one of "
                        f"{', '.join(TARGETS)} (--to)")
    if target not in TARGETS:
        raise UserError(f"unknown target format '{target}' (choose from {', '.join(TARGETS)})")
    if Path(output).exists() and Path(source).exists() and Path(output).resolve() == Path(source).resolve():
        raise UserError(f"{output}: output and input are the same file")
    ckpt = read_checkpoint(source, fmt, arch)
    written = write_checkpoint(ckpt, output, target)
    try:
        return verify_conversion(ckpt, output, target, written, numerical=numerical, library_checks=library_checks)
    except BaseException:
        Path(output).unlink(missing_ok=True)
        raise
