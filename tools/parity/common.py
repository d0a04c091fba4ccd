"""Shared by the parity scripts: locate an official checkout, collect comparisons, print the table.

Each script in ``tools/parity/`` takes the path of a checkout of an official repository (never
copied into this project), runs the official code and ours on identical inputs in fp32 on CPU, adds
one row per compared quantity and ends with :meth:`ParityReport.finish`, which prints the table and
exits non-zero when any row is outside its tolerance.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as `python tools/parity/X.py` from a source checkout
    sys.path.insert(0, str(REPO_ROOT))


def reference_parser(description: str, repo: str) -> argparse.ArgumentParser:
    """An argument parser whose first argument is the official checkout's path."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("reference", type=Path, help=f"path of a checkout of {repo} (its files are imported "
                                                     "from there, never copied into this project)")
    return parser


def add_reference_to_path(checkout: Path, must_contain: str) -> Path:
    """Put an official checkout first on ``sys.path``; a clear error if it is not the expected repository."""
    checkout = checkout.resolve()
    if not (checkout / must_contain).exists():
        raise SystemExit(f"{checkout}: not the expected checkout (no {must_contain})")
    sys.path.insert(0, str(checkout))
    return checkout


def checkout_revision(checkout: Path) -> str:
    """The checkout's git commit, or 'unknown' (an exported tree has no .git)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def max_abs_diff(a, b) -> float:
    """Largest absolute difference of two tensors (or numbers / arrays) of the same shape."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape:
        return float("inf")
    return 0.0 if a.numel() == 0 else (a - b).abs().max().item()


@dataclass
class Row:
    what: str
    diff: float
    tolerance: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.diff <= self.tolerance


class ParityReport:
    """Rows of (quantity, max |ours - official|, tolerance); prints a markdown table."""

    def __init__(self, title: str, reference: str) -> None:
        self.title, self.reference, self.rows = title, reference, []

    def add(self, what: str, ours, official, tolerance: float = 0.0, detail: str = "") -> Row:
        row = Row(what, max_abs_diff(ours, official), tolerance, detail)
        self.rows.append(row)
        return row

    def add_equal(self, what: str, ours, official, detail: str = "") -> Row:
        """A row for values that must be identical (names, labels, predictions): 0 or 1 mismatch."""
        row = Row(what, 0.0 if ours == official else 1.0, 0.0, detail)
        self.rows.append(row)
        return row

    def table(self) -> str:
        lines = [f"### {self.title}", "", f"reference: {self.reference}", "",
                 "| compared | max abs diff | tolerance | equal | detail |", "|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.what} | {r.diff:.3g} | {r.tolerance:g} | {'yes' if r.ok else '**NO**'} | {r.detail} |")
        failed = sum(not r.ok for r in self.rows)
        lines += ["", f"{len(self.rows)} rows compared, {failed} mismatch(es)"]
        return "\n".join(lines)

    def finish(self) -> None:
        """Print the table; exit 1 on any mismatch (or when nothing was compared)."""
        print(self.table())
        if not self.rows or any(not r.ok for r in self.rows):
            raise SystemExit(1)
