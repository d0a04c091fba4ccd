"""Candidate search in reduced precision (bfloat16 on CPUs with its instructions, float16 on GPUs), with
the float32 search's guarantees, so the certified vote (``certify.py``) predicts exactly as before.

A reduced-precision matmul picks more rows than asked for; they are re-scored in float32 and the best
m kept. Whatever the reduced matmul got wrong is bounded (:func:`reduced_precision_bound`, from the
measured rounding of the query and of the bank's rows): a row it left out scores at most that bound on
the last candidate's reduced score. A query whose m-th re-scored row is not safely above that is
searched again by the float32 backend. Either way each query gets what a float32 search returns: its m
best rows by float32 similarity, any row left out not above the m-th by more than float32 error.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from simsiam_eval.errors import UserError
from simsiam_eval.knn.bank import FeatureBank
from simsiam_eval.knn.certify import search_tolerance
from simsiam_eval.knn.search import TorchSearch

REDUCED_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
FLUSHED_SUBNORMALS = 2.0 ** -110  # CPU bf16 dot products treat subnormal inputs as 0: far below anything here
RESCORE_ELEMENTS = 1 << 24  # gathered float32 rows per re-scoring block (64 MB)


def rounding_residuals(rows: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(|rows rounded to ``dtype`` - rows|, |rows|) per row, in float64: what the bound is made of."""
    exact = rows.double()
    return (rows.to(dtype).double() - exact).norm(dim=1), exact.norm(dim=1)


def reduced_precision_bound(scores: torch.Tensor, query_residual: torch.Tensor, query_norm: torch.Tensor,
                            bank_residual: float, bank_norm: float, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The highest exact inner product q.b that a pair whose reduced-precision matmul gave ``scores``
    can have (float64; each query's residual and norm against the bank's largest).

    The rounded inputs q^, b^ err by the measured residuals, so |q^.b^ - q.b| <= r_q (|b| + r_b) + |q| r_b
    (Cauchy-Schwarz); their products are exact in float32 and the float32 accumulation of D of them errs
    by <= gamma_D |q^| |b^| with gamma_D = D 2^-24 / (1 - D 2^-24); the sum then rounds to ``dtype``, so
    the float32 sum s lies within u |score| / (1 - u) of the score (u its unit roundoff).
    """
    u = UNIT_ROUNDOFF[dtype]
    gamma = dim * 2.0 ** -24 / (1 - dim * 2.0 ** -24)
    inputs = query_residual * (bank_norm + bank_residual) + query_norm * bank_residual
    accumulation = gamma * (query_norm + query_residual) * (bank_norm + bank_residual)
    scores = scores.double()
    return scores + u * scores.abs() / (1 - u) + inputs + accumulation + dim * FLUSHED_SUBNORMALS


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
        self.bank_residual, self.bank_norm = 0.0, 0.0  # the largest over the bank's rows (one pass)
        for _, shard in bank.shards():
            residual, norm = rounding_residuals(shard, self.dtype)
            self.bank_residual = max(self.bank_residual, float(residual.max()))
            self.bank_norm = max(self.bank_norm, float(norm.max()))
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
        if wide < len(self.bank):  # a row left out scored <= the last reduced score: bound its exact score
            query_residual, query_norm = rounding_residuals(queries, self.dtype)
            outside = reduced_precision_bound(reduced[:, -1], query_residual, query_norm, self.bank_residual,
                                              self.bank_norm, self.bank.dim, self.dtype)
            unsettled = (outside > out_sims[:, -1].double() - search_tolerance(self.bank.dim)).nonzero()[:, 0]
            self.searched_again = len(unsettled)
            if len(unsettled):
                out_sims[unsettled], out_idx[unsettled] = self.fallback.search(queries[unsettled], m)
        return out_sims, out_idx
