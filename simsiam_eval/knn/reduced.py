"""Candidate search in reduced precision (bfloat16 on CPUs with its instructions, float16 on GPUs), with
the float32 search's guarantees, so the certified vote (``certify.py``) predicts exactly as before.

A reduced-precision matmul picks more rows than asked for; they are re-scored in float32 and the best
m kept. Whatever the reduced matmul got wrong is bounded (:func:`reduced_precision_error`): a row it
left out scores at most its last candidate's score plus that bound. A query whose m-th re-scored row
is not safely above that is searched again by the float32 backend. Either way each query gets what a
float32 search returns: its m best rows by float32 similarity, any row left out not above the m-th by
more than float32 error.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from simsiam_eval.errors import UserError
from simsiam_eval.knn.bank import FeatureBank
from simsiam_eval.knn.certify import search_tolerance
from simsiam_eval.knn.search import TorchSearch

REDUCED_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
FLOAT16_SUBNORMAL_ERROR = 2.0 ** -25  # absolute rounding error below float16's normal range (2^-14)
RESCORE_ELEMENTS = 1 << 24  # gathered float32 rows per re-scoring block (64 MB)


def reduced_precision_error(dim: int, dtype: torch.dtype) -> float:
    """A bound on |reduced-precision inner product - exact| for two unit float32 vectors.

    Each input rounds with relative error <= u, so sum |x^y^ - xy| <= (2u + u^2) sum |xy| <= 2u + u^2
    (Cauchy-Schwarz; for float16 plus the absolute error of subnormal inputs); the float32 accumulation
    of D products errs by <= D 2^-24 (1 + u)^2; the result rounds to the dtype, <= u times its size.
    """
    u = UNIT_ROUNDOFF[dtype]
    products = 2 * u + u * u
    if dtype == torch.float16:
        products += 2 * FLOAT16_SUBNORMAL_ERROR * math.sqrt(dim) * (1 + u)
    accumulation = dim * 2.0 ** -24 * (1 + u) ** 2
    return products + accumulation + u * (1 + products + accumulation)


@contextmanager
def _full_precision_sums():
    """CUDA float16 matmuls accumulate in float32 (no reduced-precision split-K) inside the block."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = saved


def extra_candidates(m: int) -> int:
    """Rows the reduced matmul picks beyond m: room for its error band."""
    return max(m, 256)


class ReducedPrecisionSearch:
    """Top-m rows by a reduced-precision matmul, re-scored in float32; ``fallback`` (a float32 search)
    for the queries the reduced pass cannot settle."""

    max_k = None

    def __init__(self, bank: FeatureBank, fallback, precision: str, device: torch.device | None = None) -> None:
        if precision not in REDUCED_DTYPES:
            raise UserError(f"unknown reduced search precision '{precision}' (choose from {', '.join(REDUCED_DTYPES)})")
        self.bank, self.fallback, self.dtype = bank, fallback, REDUCED_DTYPES[precision]
        self.reduced = TorchSearch(bank, device, dtype=self.dtype)
        self.name = f"torch-{precision}+{fallback.name}"
        self.error = reduced_precision_error(bank.dim, self.dtype)
        self.searched_again = 0  # queries the last search handed to the float32 fallback

    def search(self, queries: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 similarities and indices of the m best rows per query, best first."""
        wide = min(len(self.bank), m + extra_candidates(m))
        with _full_precision_sums():
            reduced, idx = self.reduced.search(queries, wide)
        sims = torch.empty(len(queries), wide)
        rows = max(1, RESCORE_ELEMENTS // (wide * self.bank.dim))
        for start in range(0, len(queries), rows):
            block = slice(start, start + rows)
            sims[block] = torch.bmm(self.bank.rows(idx[block]), queries[block, :, None]).squeeze(2)
        order = sims.sort(dim=1, descending=True, stable=True).indices[:, :m]
        out_sims, out_idx = sims.gather(1, order), idx.gather(1, order)
        if wide < len(self.bank):  # a row left out scores <= the last reduced score + error
            outside = reduced[:, -1] + self.error
            unsettled = (outside > out_sims[:, -1] - search_tolerance(self.bank.dim)).nonzero()[:, 0]
            self.searched_again = len(unsettled)
            if len(unsettled):
                out_sims[unsettled], out_idx[unsettled] = self.fallback.search(queries[unsettled], m)
        return out_sims, out_idx
