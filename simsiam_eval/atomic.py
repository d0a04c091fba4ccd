"""Atomic file writes: write a temporary file next to the target, then rename over it.

A write that fails because the disk is full or read-only (ENOSPC, EDQUOT, EFBIG, EROFS, EACCES, EIO)
is a one-line UserError naming the target; the temporary file is removed and the target, if it
existed, is left as it was. torch's own writer reports such a failure as a RuntimeError whose
context is the OSError (files are handed to it as Python file objects so that the OSError is kept).
A writer killed with SIGKILL leaves the target as it was and its temporary file behind; the next write
of the same target deletes it (tools/fault_injection.py checks both).
"""
from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from simsiam_eval.errors import UserError
from simsiam_eval.fault_points import fault_point

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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def remove_stale_temporaries(target: Path) -> None:
    """Delete the temporary files of earlier writes of ``target`` whose writer on this host is dead
    (killed between writing and renaming: SIGKILL runs no clean-up)."""
    head, host = f".{target.name}.", f"@{socket.gethostname()}."
    for path in target.parent.glob(f"{glob.escape(head)}*.tmp"):
        writer = path.name[len(head):]  # PID@HOST.RANDOM.tmp
        pid = writer.partition("@")[0]
        if pid.isdigit() and writer[len(pid):].startswith(host) and not _pid_alive(int(pid)):
            path.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    The temporary file is named after the target, the writer's pid and host; a write first deletes
    those a dead writer left."""
    target = Path(target)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}@{socket.gethostname()}.", suffix=".tmp",
                                   dir=target.parent)
        os.close(fd)
        yield Path(tmp)
        fault_point("atomic-rename")
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


class _Midway:
    """A file that passes the ``atomic-write`` fault point after its first write: a kill there finds the
    file part written (what a non-atomic writer would leave in place of the target)."""

    def __init__(self, file) -> None:
        self.file, self.first = file, True

    def write(self, data):
        written = self.file.write(data)
        if self.first:
            self.first = False
            self.file.flush()
            fault_point("atomic-write")
        return written

    def flush(self) -> None:
        self.file.flush()


def atomic_torch_save(obj: Any, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        torch.save(obj, _Midway(f))


def atomic_write_text(text: str, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp, open(tmp, "w") as f:
        out = _Midway(f)
        out.write(text[:len(text) // 2])
        out.write(text[len(text) // 2:])


def atomic_write_json(obj: Any, target: str | os.PathLike) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", target)
