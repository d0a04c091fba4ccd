"""Named fault points: a testing hook that holds the process at a chosen point so a test can kill it there.

``SIMSIAM_EVAL_FAULT_POINT=NAME@N`` makes the N-th pass (1-based) of this process through the point
``NAME`` append ``NAME@N pid`` to the file ``SIMSIAM_EVAL_FAULT_REPORT`` and then sleep until the
process is killed. ``SIMSIAM_EVAL_FAULT_POINT=*`` only traces: every pass appends its ``NAME@N``
line and goes on. Unset, :func:`fault_point` returns at once (one comparison). tools/fault_injection.py
uses it; nothing else should set these variables.

The points (where a kill must lose nothing):
``atomic-write``    an atomic write has written part of its temporary file (simsiam_eval/atomic.py)
``atomic-rename``   an atomic write's temporary file is complete, the rename not done
``record-commit``   a record's row is inserted, its transaction not committed (simsiam_eval/results/store.py)
``record-stored``   a record's JSON file is written, its row not yet inserted (simsiam_eval/results/store.py)
``cache-entry``     a feature entry's description is written, its features file not yet (simsiam_eval/features.py)
``epoch-end``       a pretraining or linear-probe epoch is saved (its metrics line, then its checkpoint)
``trial-step``      a Detectron2 transfer trial has taken a step (transfer/trainer.py)
"""
from __future__ import annotations

import os
import time
from collections import Counter

POINT_ENV, REPORT_ENV = "SIMSIAM_EVAL_FAULT_POINT", "SIMSIAM_EVAL_FAULT_REPORT"
TRACE = "*"
POINTS = ("atomic-write", "atomic-rename", "record-commit", "record-stored", "cache-entry", "epoch-end", "trial-step")

_ARMED = os.environ.get(POINT_ENV) or None
_passes: Counter = Counter()


def arm(point: str | None) -> None:
    """Arm ``point`` (``NAME@N``, ``*`` or None) in this process from zero passes: for in-process runs."""
    global _ARMED
    _ARMED = point
    _passes.clear()


def fault_point(name: str) -> None:
    """Pass the point ``name``: nothing unless ``SIMSIAM_EVAL_FAULT_POINT`` is set (see the module docstring)."""
    if _ARMED is None:
        return
    _passes[name] += 1
    here = f"{name}@{_passes[name]}"
    if _ARMED == TRACE or _ARMED == here:
        with open(os.environ[REPORT_ENV], "a") as report:
            report.write(f"{here} {os.getpid()}\n")
        while _ARMED == here:
            time.sleep(3600)
