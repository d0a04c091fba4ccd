"""Atomic file writes: write a temporary file next to the target, then rename over it.

A write that fails because the disk is full or read-only (ENOSPC, EDQUOT, EFBIG, EROFS, EACCES, EIO)
is a one-line UserError naming the target; the temporary file is removed and the target, if it
existed, is left as it was. torch's own writer reports such a failure as a RuntimeError whose
context is the OSError (files are handed to it as Python file objects so that the OSError is kept).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from simsiam_eval.errors import UserError

STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO}


def storage_error(exc: BaseException) -> OSError | None:
    """The full-disk / read-only OSError behind ``exc`` (itself or its context chain), or None."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2 ** 20:.0f} MiB free"
    except OSError:
        return "free space unknown"


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success."""
    target = Path(target)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, target)
    except (OSError, RuntimeError) as exc:
        cause = storage_error(exc)
        if cause is None:
            raise
        kept = "the previous version is intact" if target.exists() else "nothing was written"
        raise UserError(f"{target}: could not be written ({cause.strerror}; {_free_space(target.parent)}); "
                        f"{kept}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_torch_save(obj: Any, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(text: str, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp, open(tmp, "w") as f:
        f.write(text)


def atomic_write_json(obj: Any, target: str | os.PathLike) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", target)
