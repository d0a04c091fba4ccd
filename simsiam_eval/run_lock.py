"""One run per output folder: a run that would write into a folder another live run holds is refused.

The hold is an advisory ``flock`` on ``<folder>/.simsiam-eval.lock``; the kernel drops it when the
holding process ends, however it ends (SIGKILL included), so a folder is never left locked by a dead
run. The file says who holds it. On systems without ``fcntl`` (Windows) nothing is held.
"""
from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from simsiam_eval.distributed import all_ranks_agree
from simsiam_eval.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".simsiam-eval.lock"


@contextmanager
def hold_output_dir(folder: str | os.PathLike, is_main: bool = True) -> Iterator[None]:
    """Hold ``folder`` for this run (the main process takes the lock; every process learns whether it
    got it, so under torchrun all of them stop together when another run holds the folder)."""
    handle, refusal = None, None
    if is_main and fcntl is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_NAME, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            handle = None
            refusal = UserError(f"{folder}: in use by another run ({holder}); wait for it to end or choose "
                                "another output_dir")
        else:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
    try:
        if not all_ranks_agree(refusal is None):
            raise refusal or UserError(f"{folder}: in use by another run")
        yield
    finally:
        if handle is not None:
            handle.close()
