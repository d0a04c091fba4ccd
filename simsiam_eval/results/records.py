"""Build the record every evaluation produces.

Shape: ``{protocol, metrics{...}, checkpoint{path, sha256, arch, format}, data{...}, settings{...},
seed, trial, versions{...}, git, started, seconds}``. Tables read only records.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from simsiam_eval.provenance import git_revision, versions

RECORD_KEYS = ("protocol", "metrics", "checkpoint", "data", "settings", "seed", "trial",
               "versions", "git", "started", "seconds")


def build_record(protocol: str, metrics: Mapping[str, float], checkpoint: Mapping[str, Any],
                 data: Mapping[str, Any], settings: Mapping[str, Any], started: float, seconds: float,
                 seed: int | None = None, trial: int | None = None) -> dict:
    """A complete record; ``started`` is a POSIX timestamp, ``seconds`` the wall time."""
    return {
        "protocol": protocol,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "checkpoint": dict(checkpoint),
        "data": dict(data),
        "settings": dict(settings),
        "seed": seed,
        "trial": trial,
        "versions": versions(),
        "git": git_revision(),
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(float(seconds), 3),
    }
